"""The nginx site of stages 05-08 (``deploy/nginx.conf`` and ``deploy/nginx-tls.conf``)
as clients meet it on loopback: a browser, which names the site in the TLS handshake
(SNI); a scanner of addresses, which does not; a client that sends its headers slowly.
And what a security linter for nginx finds in the files.
"""

import os
import re
import select
import socket
import ssl
import subprocess
import time
from urllib.parse import urlsplit

import pytest

from tests.helpers.proxy import read_to_end
from tests.helpers.reader import APP
from tests.helpers.scanners import gixy_findings, sslyze_failures
from tools import loopback

pytestmark = [
    pytest.mark.stages('05', '06', '07', '08', '09', '10'),
    # The site: a stage that carries these as they were runs these tests no more.
    pytest.mark.covers(*APP, 'gunicorn.conf.py', 'deploy/nginx.conf', 'deploy/nginx-tls.conf'),
]

HEADER_TIMEOUT = 10  # client_header_timeout in deploy/nginx-tls.conf


def test_tls_for_a_client_naming_the_site_is_mozilla_intermediate(site):
    url = urlsplit(site.https_url)
    failures = sslyze_failures(f'{url.hostname}:{url.port}{{127.0.0.1}}')
    # The one failure is the loopback run's self-signed certificate, which no one trusts.
    assert list(failures) == ['certificate_path_validation'], failures


@pytest.mark.parametrize('name', [None, 'evil.example'], ids=['no name', 'another name'])
def test_a_handshake_not_naming_the_site_is_refused_without_a_certificate(site, name):
    url = urlsplit(site.https_url)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # take any
    with socket.create_connection(('127.0.0.1', url.port), timeout=30) as sock:
        with pytest.raises(ssl.SSLError, match='UNRECOGNIZED_NAME'):
            context.wrap_socket(sock, server_hostname=name)


def url_host(site):
    return urlsplit(site.https_url).hostname


@pytest.mark.parametrize('tls', [True, False], ids=['https', 'http'])
def test_a_client_slow_with_its_headers_is_closed_at_the_timeout(site, tls):
    """A header byte every half second, never the blank line that ends them: nginx
    closes the connection at client_header_timeout, and gunicorn never hears of it."""
    with site.connect(tls) as sock:
        sock.sendall(f'GET /slow-headers HTTP/1.1\r\nHost: {url_host(site)}\r\nX-Slow: '.encode())
        started = time.monotonic()
        closed_after = None
        while closed_after is None and time.monotonic() - started < 6 * HEADER_TIMEOUT:
            try:
                sock.sendall(b'x')
                if select.select([sock], [], [], 0.5)[0] and sock.recv(65536) == b'':
                    closed_after = time.monotonic() - started
            except (ssl.SSLError, ConnectionError):
                closed_after = time.monotonic() - started
    assert closed_after is not None, 'still open after a minute'
    assert HEADER_TIMEOUT - 1 < closed_after < HEADER_TIMEOUT + 5, closed_after
    assert '/slow-headers' not in site.gunicorn_log()


def answer(site, head):
    """The whole answer to ``head``, a request without a body, over HTTPS."""
    with site.connect() as sock:
        sock.sendall(head.encode())
        return read_to_end(sock)


# Request heads around gunicorn's default limits (a 4094-byte request line, 8190 bytes
# a header, 100 headers) and nginx's (8 KB buffers).
LARGE_HEADS = {
    **{f'line {n}': ('/' + 'a' * (n - 14), '') for n in (4095, 8190, 8191, 9000)},
    **{f'header {n}': ('/', f'X-Large: {"b" * (n - 9)}\r\n') for n in (8190, 8191)},
    **{f'{n} headers': ('/', ''.join(f'X-{i}: 1\r\n' for i in range(n))) for n in (101, 3000)},
}


@pytest.mark.parametrize('head', LARGE_HEADS.values(), ids=LARGE_HEADS)
def test_a_large_request_gets_the_apps_page_or_nginxs_never_gunicorns(site, head):
    path, headers = head
    host = url_host(site)
    received = answer(
        site, f'GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n'
    )
    status, _, body = received.partition(b'\r\n\r\n')
    if b'<center>nginx</center>' in body:
        assert re.match(rb'HTTP/1.1 (400|414) ', status), status
        assert b'\r\nStrict-Transport-Security: ' in status  # the site's headers
    else:  # gunicorn passed it to the app, which knows no such page, or shows it
        assert re.match(rb'HTTP/1.1 (200|404) ', status), received[:300]
        assert body.startswith(b'<!doctype html>'), received[:300]


def test_only_nginx_can_reach_gunicorns_socket(site):
    """gunicorn believes the X-Forwarded-* headers of whoever connects to its socket: its
    folder lets nginx's workers in (started as root, nginx runs them as nobody), and no
    other user."""
    folder = site.socket_path.parent
    assert folder.stat().st_mode & 0o007 == 0, oct(folder.stat().st_mode)
    if os.geteuid() == 0:
        probe = f'import socket; socket.socket(socket.AF_UNIX).connect({str(site.socket_path)!r})'
        for user in ('daemon', loopback.NGINX_USER):
            result = subprocess.run(
                ['runuser', '-u', user, '--', '/usr/bin/python3', '-c', probe],  # not root's
                capture_output=True,
                text=True,
                timeout=60,
            )
            refused = 'PermissionError' in result.stderr
            assert refused == (user == 'daemon'), (user, result.stderr)


def test_a_security_linter_finds_nothing_in_the_site(stage_dir, tmp_path):
    """gixy, with nginx's main configuration reduced to the include of the site."""
    site = (stage_dir / 'deploy' / 'nginx.conf').read_text()
    for placeholder, value in loopback.TEMPLATE.items():  # stage 06 on: a template
        site = site.replace(placeholder, value)
    (tmp_path / 'site.conf').write_text(site)
    (tmp_path / 'snippets').mkdir()
    (tmp_path / 'snippets' / 'app-deploy-tls.conf').write_text(
        (stage_dir / 'deploy' / 'nginx-tls.conf').read_text()
    )
    (tmp_path / 'nginx.conf').write_text('events {}\nhttp {\n    include site.conf;\n}\n')
    assert gixy_findings(tmp_path / 'nginx.conf') == []
