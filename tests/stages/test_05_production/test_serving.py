"""Stage 05 served as in production, on loopback: nginx over HTTPS in front of gunicorn.

Every request goes through the stage's own ``deploy/nginx.conf`` and ``gunicorn.conf.py``
(see ``tools/loopback.py``). The tests count status codes, never time anything.
"""

import collections
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers.reader import stored_names
from tools import loopback
from tools.processes import children, free_ports
from tools.stages import ROOT

pytestmark = pytest.mark.stages('05')

UNIT = 'deploy/app-deploy.service'
TOKEN = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
SECURITY_HEADERS = {
    'Content-Security-Policy': "default-src 'self'",
    'X-Content-Type-Options': 'nosniff',
    'X-Frame-Options': 'DENY',
    'Referrer-Policy': 'same-origin',
}


class Client:
    """One browser: its own cookies, the throwaway certificate trusted."""

    def __init__(self, site):
        self.site = site
        self.http = requests.Session()
        self.http.trust_env = False  # no proxy, no CA bundle from the environment
        self.http.verify = str(site.certificate)

    def get(self, path='/', **kwargs):
        return self.http.get(self.site.https_url + path, timeout=30, **kwargs)

    def post(self, name, token):
        """Submit the form as a browser does; Flask-WTF wants the Referer over HTTPS."""
        url = self.site.https_url + '/'
        data = {'csrf_token': token, 'name': name}
        headers = {'Referer': url}
        return self.http.post(url, data=data, headers=headers, timeout=30, allow_redirects=False)

    def token(self):
        return TOKEN.search(self.get().text)[1]


def raw(site, request, tls=True):
    """Send ``request`` as it is, no client tidying it; return all the server answers."""
    answer = b''
    with site.connect(tls) as sock:
        sock.sendall(request)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ssl.SSLEOFError, ConnectionResetError):
            pass  # closed without a goodbye: what nginx's 444 does
    return answer


def status(answer):
    return int(answer.split(b' ', 2)[1])


def gunicorn_requests(site, method):
    """The requests with ``method`` that reached gunicorn, from its access log."""
    return [line for line in site.gunicorn_log().splitlines() if f'"{method} ' in line]


# The page, forms and redirects


def test_page_and_post_with_csrf_token(site, database):
    client = Client(site)
    page = client.get()
    assert page.status_code == 200
    assert 'Hello World!' in page.text
    response = client.post('Ada', client.token())
    assert response.status_code == 302
    assert 'Ada' in client.get(response.headers['Location']).text
    assert stored_names(database) == ['Ada']


def test_post_without_csrf_token_is_refused(site, database):
    client = Client(site)
    client.get()
    assert client.post('Mallory', '').status_code == 400
    assert stored_names(database) == []


@pytest.mark.parametrize('method', ['GET', 'POST'])
def test_http_redirects_to_https(site, method):
    response = Client(site).http.request(
        method, site.http_url + '/?page=2', allow_redirects=False, timeout=30
    )
    assert response.status_code in (301, 308)
    assert response.headers['Location'] == site.https_url + '/?page=2'


# Headers and what the server says about itself


def nginx_answers(site):
    """A page from the app and error pages from nginx itself."""
    client = Client(site)
    token = client.token()
    return {
        'page': client.get(),
        'app 404': client.get('/no-such-page'),
        'too large': client.post('x' * 100_000, token),
        'method': client.http.put(site.https_url + '/', timeout=30),
    }


def test_security_headers_on_every_answer(site):
    for name, response in nginx_answers(site).items():
        headers = response.headers
        hsts = dict(
            part.strip().partition('=')[::2]
            for part in headers['Strict-Transport-Security'].split(';')
        )
        assert int(hsts['max-age']) >= 365 * 24 * 3600, name
        assert 'includeSubDomains' not in hsts, name  # it would bind staging (Part 6)
        for header, value in SECURITY_HEADERS.items():
            assert value in headers.get(header, ''), (name, header)
        assert "frame-ancestors 'none'" in headers['Content-Security-Policy'], name


def test_no_version_disclosed(site):
    for name, response in nginx_answers(site).items():
        assert response.headers['Server'] == 'nginx', name
        assert not re.search(r'nginx/\d|gunicorn|Werkzeug|Traceback', response.text), name


def test_site_file_fits_debians_nginx_conf(reader, tmp_path):
    """Debian's nginx.conf sets ssl_protocols for all of http: the site must not clash
    with it, and must pass ``nginx -t`` there with no warning."""
    stock = Path('/etc/nginx/nginx.conf')
    if not stock.exists():
        pytest.skip(f'{stock} is missing: sudo apt-get install nginx')
    http_port, https_port = free_ports(2)
    site = loopback.render_site(
        reader.dir / 'deploy' / 'nginx.conf',
        http_port=http_port,
        https_port=https_port,
        socket_path=tmp_path / 'gunicorn.sock',
        certificate=tmp_path / 'cert.pem',
        key=tmp_path / 'key.pem',
        snippet=reader.dir / 'deploy' / 'nginx-tls.conf',
    )
    loopback.make_certificate(tmp_path)
    (tmp_path / 'site.conf').write_text(site)
    conf = stock.read_text()
    for line in re.findall(r'^\s*(?:pid|error_log|access_log) .*$', conf, re.M):
        conf = conf.replace(line, '')
    conf = loopback.substitute(
        conf, 'include /etc/nginx/sites-enabled/*;', f'include {tmp_path}/site.conf;'
    )
    conf = loopback.substitute(conf, 'http {', 'http {' + loopback.TEMP_PATHS.format(dir=tmp_path))
    (tmp_path / 'nginx.conf').write_text(f'pid {tmp_path}/nginx.pid;\n{conf}')
    result = subprocess.run(
        [loopback.nginx_binary(), '-t', '-c', tmp_path / 'nginx.conf', '-p', tmp_path]
        + ['-e', tmp_path / 'error.log'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert '[warn]' not in result.stderr and '[emerg]' not in result.stderr, result.stderr


# Bad requests


def test_large_body_gets_413_from_nginx(site, database):
    client = Client(site)
    response = client.post('x' * 100_000, client.token())
    assert response.status_code == 413
    assert '413 Request Entity Too Large' in response.text  # nginx's own page
    assert gunicorn_requests(site, 'POST') == []
    assert stored_names(database) == []


@pytest.mark.parametrize('tls', [True, False], ids=['https', 'http'])
def test_unknown_host_is_refused(site, tls):
    path = f'/probe-{secrets.token_hex(4)}'
    for host in ('evil.example', f'{loopback.SITE_NAME}.evil.example'):
        request = f'GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n'
        assert raw(site, request.encode(), tls) == b''  # closed without an answer (444)
    if not tls:  # over TLS, the name in the handshake is the host (tests/test_nginx_site.py)
        assert raw(site, f'GET {path} HTTP/1.0\r\n\r\n'.encode(), tls) == b''  # no Host
    assert path not in site.gunicorn_log()


@pytest.mark.parametrize(
    'path', ['/../etc/passwd', '/%2e%2e/%2e%2e/etc/passwd', '/a/..%2f..%2f..%2fetc/passwd']
)
def test_path_traversal_is_refused(site, path):
    request = f'GET {path} HTTP/1.1\r\nHost: {loopback.SITE_NAME}\r\nConnection: close\r\n\r\n'
    answer = raw(site, request.encode())
    assert status(answer) in (400, 404)
    assert b'root:' not in answer


@pytest.mark.parametrize('method', ['TRACE', 'TRACK', 'PUT', 'DELETE', 'PROPFIND', 'FOO'])
def test_odd_methods_are_refused_by_nginx(site, method):
    request = f'{method} / HTTP/1.1\r\nHost: {loopback.SITE_NAME}\r\nConnection: close\r\n\r\n'
    assert status(raw(site, request.encode())) in (403, 405)
    assert gunicorn_requests(site, method) == []


def test_posts_over_the_rate_limit_get_429(site, database):
    client = Client(site)
    token = client.token()
    codes = collections.Counter(
        client.post(f'name {number}', token).status_code for number in range(30)
    )
    assert set(codes) == {302, 429}, codes
    assert codes[302] >= 10  # the burst passes
    assert len(stored_names(database)) == codes[302]
    assert {client.get().status_code for _ in range(30)} == {200}  # pages are not limited


# Slow clients and load


@pytest.fixture
def one_worker_site(production_env, database):
    """The stage behind nginx with a single gunicorn worker: any wait would show."""
    env = {'WEB_CONCURRENCY': '1'}
    with loopback.serve(production_env.dir, production_env.bin, database, env) as site:
        yield site


def test_slow_client_does_not_hold_up_others(one_worker_site, database):
    site = one_worker_site
    client = Client(site)
    body = f'csrf_token={client.token()}&name=Slow'.encode()
    url = urlsplit(site.https_url)
    context = ssl.create_default_context(cafile=site.certificate)
    sock = context.wrap_socket(
        socket.create_connection((url.hostname, url.port), timeout=30),
        server_hostname=url.hostname,
    )
    cookie = '; '.join(f'{k}={v}' for k, v in client.http.cookies.items())
    headers = (
        f'POST / HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n'
        'Content-Type: application/x-www-form-urlencoded\r\n'
        f'Content-Length: {len(body)}\r\nCookie: {cookie}\r\nReferer: {site.https_url}/\r\n\r\n'
    )
    with sock:
        sock.sendall(headers.encode())
        sock.sendall(body[:1])
        # The slow client has sent its headers and one byte: other clients go on.
        others = [Client(site).get().status_code for _ in range(10)]
        for byte in body[1:]:
            sock.sendall(bytes([byte]))
            time.sleep(0.05)
        answer = sock.recv(65536)
    assert others == [200] * 10
    assert status(answer) == 302
    assert stored_names(database) == ['Slow']


def load(site, clients, seconds, max_requests, during=None):
    """``clients`` browsers loading the page, one request in ten a post, until ``seconds``
    pass or ``max_requests`` are sent; ``during()`` runs meanwhile. Returns the outcomes
    (a 429 on a post is the rate limit working) and the names whose post was stored."""
    outcomes, stored = collections.Counter(), []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    turns = iter(range(1, max_requests + 1))

    def browse(number):
        client, token = Client(site), []
        while time.monotonic() < deadline:
            with lock:
                turn = next(turns, None)
            if turn is None:
                return
            name = f'load {number} {turn}' if turn % 10 == 0 else None
            outcome, name = visit(client, token, name)
            with lock:
                outcomes[outcome] += 1
                stored.extend([name] if outcome == 'stored' else [])

    threads = [threading.Thread(target=browse, args=(number,)) for number in range(clients)]
    for thread in threads:
        thread.start()
    try:
        if during:
            during()
    finally:
        for thread in threads:
            thread.join()
    return outcomes, stored


def visit(client, token, name=None):
    """One request of a browser: post ``name`` if given, else load the page; ``token``
    holds the client's CSRF token once it has fetched it. Returns what came of it
    (stored, limited, page, or the code or error) and ``name``."""
    try:
        if not token:
            token.append(client.token())
        if name is None:
            code = client.get().status_code
            return ('page' if code == 200 else f'GET {code}'), name
        code = client.post(name, token[0]).status_code
        return {302: 'stored', 429: 'limited'}.get(code, f'POST {code}'), name
    except requests.RequestException as error:
        return type(error).__name__, name


def failures(outcomes):
    return {outcome: count for outcome, count in outcomes.items() if outcome not in OK}


OK = {'page', 'stored', 'limited'}


def test_fifty_clients_without_a_failed_request(site, database):
    outcomes, stored = load(site, clients=50, seconds=20, max_requests=20_000)
    assert failures(outcomes) == {}, outcomes
    assert outcomes['page'] > 0 and outcomes['stored'] > 0
    assert sorted(stored_names(database)) == sorted(stored)  # none lost, none twice


def test_reload_on_hup_under_load(production_env, database):
    """HUP to the master, as ``systemctl reload`` sends: new workers, no request lost."""
    env = {'WEB_CONCURRENCY': '3'}
    with loopback.serve(production_env.dir, production_env.bin, database, env) as site:
        before = wait_for_workers(site, lambda pids: len(pids) == 3)

        def reload():
            time.sleep(2)  # under load first
            os.kill(site.gunicorn_pid, signal.SIGHUP)
            wait_for_workers(site, lambda pids: len(pids) == 3 and not set(pids) & set(before))

        outcomes, stored = load(site, clients=20, seconds=12, max_requests=10_000, during=reload)
        after = site.worker_pids()
    assert failures(outcomes) == {}, outcomes
    assert outcomes['page'] > 0
    assert len(after) == 3 and not set(after) & set(before), (before, after)
    assert sorted(stored_names(database)) == sorted(stored)


def wait_for_workers(site, done, seconds=45):
    """Poll the master's workers until ``done(pids)``; return them."""
    deadline = time.monotonic() + seconds
    while not done(pids := site.worker_pids()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return pids


# gunicorn on its own


def test_no_shared_control_socket(production_env, database, tmp_path):
    """gunicorn 27 would open ~/.gunicorn/gunicorn.ctl, shared by all of a user's servers."""
    home = tmp_path / 'home'
    home.mkdir()
    env = {'HOME': str(home), 'XDG_RUNTIME_DIR': ''}
    with loopback.serve(production_env.dir, production_env.bin, database, env) as site:
        assert Client(site).get().status_code == 200
        assert list(home.iterdir()) == []


SERVE = """
import sys, time
from tools import loopback
from tools.stages import ROOT
with loopback.serve(*sys.argv[1:]) as site:
    print(site.gunicorn_pid, site.nginx_pid, site.dir, flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'Ctrl-C'])
def test_signal_stops_everything_and_leaves_nothing(production_env, database, signum):
    command = [sys.executable, '-c', SERVE, production_env.dir, production_env.bin, database]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as runner:
        try:
            master, nginx, directory = runner.stdout.readline().split()
            pids = [int(master), int(nginx)]
            pids += children(int(master)) + children(int(nginx))
            runner.send_signal(signum)
            runner.wait(60)
        finally:
            runner.kill()
    # SIGTERM: the harness's SystemExit(143); Ctrl-C: Python's own exit by SIGINT.
    assert runner.returncode == (143 if signum == signal.SIGTERM else -signal.SIGINT)
    assert len(pids) >= 4  # two masters and their workers
    assert not Path(directory).exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# The systemd unit


def systemd_analyze():
    found = shutil.which('systemd-analyze')
    if not found:
        pytest.skip('systemd-analyze is missing: sudo apt-get install systemd')
    return found


def test_systemd_unit_verifies(reader, tmp_path):
    """``systemd-analyze verify`` exits 0 even on unknown keys: any output is a failure.
    It checks that ExecStart exists, so point it at this stage's own gunicorn."""
    unit = (reader.dir / UNIT).read_text()
    gunicorn = '/srv/app-deploy/.venv/bin/gunicorn'
    assert f'ExecStart={gunicorn} ' in unit
    copy = tmp_path / 'app-deploy.service'
    copy.write_text(unit.replace(gunicorn, str(reader.bin / 'gunicorn')))
    result = subprocess.run(
        [systemd_analyze(), 'verify', copy], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, '')


def test_systemd_unit_is_sandboxed(reader):
    result = subprocess.run(
        [systemd_analyze(), 'security', '--offline=true', reader.dir / UNIT],
        capture_output=True,
        text=True,
        timeout=60,
    )
    exposure = re.search(
        r'Overall exposure level for app-deploy\.service: ([\d.]+)', result.stdout
    )
    assert exposure, result.stdout + result.stderr
    assert float(exposure[1]) <= 2.0, result.stdout
