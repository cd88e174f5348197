"""Run a stage as production does, on loopback: gunicorn behind nginx over HTTPS.

    with loopback.serve(stage_dir, bin_dir, database_url) as site:
        requests.get(site.https_url, verify=site.certificate)

gunicorn runs with the stage's ``gunicorn.conf.py`` on a Unix socket, and nginx with
the stage's ``deploy/nginx.conf`` and ``deploy/nginx-tls.conf``, filled in for this
machine: the site's name is ``localhost`` (a name, so that clients send it in the TLS
handshake as browsers do), free loopback ports, a throwaway self-signed certificate,
paths in a temporary folder; from stage 10 on, the monitoring server's block on a
third port, for 127.0.0.1 alone, and an empty folder for the metrics of gunicorn's
workers (PROMETHEUS_MULTIPROC_DIR), as the server's unit makes. Both are stopped by
PID, and the folder removed, when the block ends, also on Ctrl-C, SIGTERM or failure.
nginx comes from the system (``apt-get install nginx``). The servers run Debian 13's
nginx 1.26; an nginx before 1.25.1 (Debian 12 has 1.22, Ubuntu 24.04 1.24) has no
``http2 on;``, so a loopback run on one serves the site without that line, over HTTP/1.1.
"""

import contextlib
import grp
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from tools.processes import children, free_ports, stop_group

# What the loopback run changes in the production site file, and how often each
# is expected there: a changed file fails loudly here instead of half-rendered.
HTTP_LISTEN = re.compile(r'^(\s*listen )80\b', re.MULTILINE)
HTTPS_LISTEN = re.compile(r'^(\s*listen )443\b', re.MULTILINE)
IPV6_LISTEN = re.compile(r'^\s*listen \[::\]:.*\n', re.MULTILINE)
REDIRECT = 'return 308 https://$host$request_uri;'
SOCKET = 'unix:/run/app-deploy/gunicorn.sock'
CERTIFICATE = '/etc/letsencrypt/live/example.com/fullchain.pem'
KEY = '/etc/letsencrypt/live/example.com/privkey.pem'
SERVER_NAME = 'server_name example.com;'
# Stage 10 on: a server block for the monitoring server alone, serving the app's metrics
# with the site's name as Host. On loopback, the monitor is this machine's 127.0.0.1.
METRICS_LISTEN = re.compile(r'^(\s*listen )9180;', re.MULTILINE)
METRICS_HOST = 'proxy_set_header Host example.com;'
MONITOR = '127.0.0.1'
# The site's name in a loopback run; its requests reach nginx on a port other than 443,
# which the host passed on to the app must keep for the CSRF check's Referer match.
SITE_NAME = 'localhost'
PROXIED_HOST = re.compile(r'^(\s*proxy_set_header (?:X-Forwarded-)?Host \$host);', re.MULTILINE)
TLS_SNIPPET = 'include snippets/app-deploy-tls.conf;'
HTTP2 = re.compile(r'^\s*http2 on;.*\n', re.MULTILINE)
HTTP2_SINCE = (1, 25, 1)  # the nginx that has `http2 on;`
# From stage 06 on the site is a template that deploy/provision.py fills in: fill it in
# as stage 05's file reads, then change that as above.
TEMPLATE = {
    '{{ env }}.sock': 'gunicorn.sock',
    '{{ certificate }}': '/etc/letsencrypt/live/example.com',
    '{{ domain }}': 'example.com',
    '{{ monitor }}': MONITOR,
}

# The folders nginx writes to: in the run's folder, not in /var/lib/nginx.
TEMP_PATHS = """
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;"""
# Who nginx's workers run as when nginx starts as root (else as whoever started it).
NGINX_USER, NGINX_GROUP = 'nobody', 'nogroup'
# nginx's own configuration for a run: the foreground, and everything in the run's folder.
MAIN_CONFIG = """\
daemon off;{user}
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{
    worker_connections 1024;
}}
http {{{temp_paths}
    access_log {dir}/access.log;
    include {dir}/site.conf;
}}
"""


class NginxMissing(RuntimeError):
    """nginx is not installed."""


class StartError(RuntimeError):
    """gunicorn or nginx did not start; the message holds its log."""


@dataclass
class LoopbackSite:
    """The running servers, as a client and a test see them."""

    https_url: str
    http_url: str
    certificate: Path  # the self-signed certificate, for ``verify=``
    socket_path: Path  # gunicorn's, which nginx's workers alone may open
    gunicorn_pid: int
    nginx_pid: int
    dir: Path
    metrics_url: str | None = None  # stage 10 on: the app's metrics, for MONITOR alone

    def worker_pids(self):
        """The PIDs of gunicorn's workers now: the master's children."""
        return children(self.gunicorn_pid)

    def gunicorn_log(self):
        return (self.dir / 'gunicorn.log').read_text()

    def nginx_log(self):
        return (self.dir / 'error.log').read_text()

    def connect(self, tls=True, timeout=30):
        """A socket to nginx: over TLS naming the site (SNI, as a browser does), or HTTP."""
        url = urlsplit(self.https_url if tls else self.http_url)
        sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
        if tls:
            context = ssl.create_default_context(cafile=self.certificate)
            sock = context.wrap_socket(sock, server_hostname=url.hostname)
        return sock


def nginx_binary():
    """The path of nginx, or NginxMissing saying how to install it."""
    found = shutil.which('nginx') or shutil.which('nginx', path='/usr/sbin:/usr/local/sbin')
    if not found:
        raise NginxMissing(
            'nginx is not installed; on Debian or Ubuntu: '
            'sudo apt-get install -y --no-install-recommends nginx'
        )
    return found


def nginx_version(nginx):
    """The version of the nginx at ``nginx``, as a tuple: (1, 22, 1)."""
    said = subprocess.run([nginx, '-v'], capture_output=True, text=True, check=True).stderr
    return tuple(int(part) for part in re.search(r'nginx/([\d.]+)', said)[1].split('.'))


def substitute(text, old, new, count=1):
    """``text`` with ``old`` (a string or a compiled pattern) replaced ``count`` times."""
    if isinstance(old, str):
        found, text = text.count(old), text.replace(old, new)
    else:
        text, found = old.subn(new, text)
    if found != count:
        raise ValueError(f'expected {count} of {getattr(old, "pattern", old)!r}, found {found}')
    return text


def render_site(
    site_file, *, http_port, https_port, socket_path, certificate, key, snippet, metrics_port=None
):
    """The production site file, filled in for a loopback run, including ``snippet``
    (and without ``http2 on;`` for an nginx that has none); from stage 10 on, with
    the monitoring server's block on ``metrics_port``."""
    text = Path(site_file).read_text()
    if nginx_version(nginx_binary()) < HTTP2_SINCE:
        text = substitute(text, HTTP2, '')
    for placeholder, value in TEMPLATE.items():
        text = text.replace(placeholder, value)
    text = substitute(text, IPV6_LISTEN, '', count=4)
    text = substitute(text, HTTP_LISTEN, rf'\g<1>127.0.0.1:{http_port}', count=2)
    text = substitute(text, HTTPS_LISTEN, rf'\g<1>127.0.0.1:{https_port}', count=2)
    text = substitute(text, REDIRECT, REDIRECT.replace('$host', f'$host:{https_port}'))
    text = substitute(text, PROXIED_HOST, r'\g<1>:$server_port;', count=2)
    text = substitute(text, SOCKET, f'unix:{socket_path}')
    text = substitute(text, CERTIFICATE, str(certificate))
    text = substitute(text, KEY, str(key))
    if METRICS_LISTEN.search(text):
        if metrics_port is None:
            raise ValueError(f'{site_file} serves metrics on port 9180: give metrics_port')
        text = substitute(text, METRICS_LISTEN, rf'\g<1>127.0.0.1:{metrics_port};')
        text = substitute(text, METRICS_HOST, f'proxy_set_header Host {SITE_NAME};')
    text = substitute(text, TLS_SNIPPET, f'include {snippet};', count=3)
    return substitute(text, SERVER_NAME, f'server_name {SITE_NAME};', count=2)


def make_certificate(directory):
    """A throwaway self-signed certificate for SITE_NAME; return (certificate, key)."""
    certificate, key = directory / 'cert.pem', directory / 'key.pem'
    subprocess.run(
        ['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1']
        + ['-nodes', '-days', '2', '-subj', f'/CN={SITE_NAME}']
        + ['-addext', f'subjectAltName=DNS:{SITE_NAME}', '-keyout', key, '-out', certificate],
        check=True,
        capture_output=True,
    )
    return certificate, key


def start(command, log, **kwargs):
    """Start ``command`` in a process group of its own, its output to the file ``log``."""
    with open(log, 'ab') as output:
        return subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )


def wait_until(ready, process, log, what, seconds=30):
    """Poll ``ready()`` until true; fail with the log if ``process`` exits or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartError(f'{what} exited with {process.returncode}:\n{log.read_text()}')
        if ready():
            return
        time.sleep(0.1)
    raise StartError(f'{what} did not answer in {seconds} s:\n{log.read_text()}')


def socket_answers(path):
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
            return True
        except OSError:
            return False


def url_answers(url, certificate):
    with requests.Session() as http:
        http.trust_env = False  # loopback: no proxy or CA bundle from the environment
        try:
            http.get(url, verify=str(certificate), timeout=2)
        except requests.exceptions.SSLError:
            raise
        except requests.ConnectionError:
            return False
    return True


@contextlib.contextmanager
def exit_on_sigterm():
    """Make SIGTERM raise SystemExit, as Ctrl-C raises KeyboardInterrupt, so that the
    ``finally`` blocks stop the servers. Only where SIGTERM still has its default."""
    in_main = threading.current_thread() is threading.main_thread()
    if not in_main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def serve(stage_dir, bin_dir, database_url, env=None, *, parent=None, site_edit=None):
    """Serve the stage in ``stage_dir`` with gunicorn from ``bin_dir`` behind nginx.

    The app runs with ``FLASK_CONFIG=production``, a random ``SECRET_KEY``,
    ``database_url`` and SITE_NAME as its trusted host; ``env`` adds to or overrides
    the environment. The temporary
    folder is made in ``parent`` (default: the system's), which nginx's workers must
    be able to enter; it holds ``gunicorn.pid`` and ``nginx.pid``. ``site_edit``, if
    given, changes the rendered site file (the benchmark lifts the rate limit). Yields
    a `LoopbackSite`.
    """
    stage_dir, bin_dir = Path(stage_dir), Path(bin_dir)
    nginx = nginx_binary()
    with exit_on_sigterm(), contextlib.ExitStack() as cleanup:
        directory = Path(tempfile.mkdtemp(prefix='app-deploy-production-', dir=parent))
        cleanup.callback(shutil.rmtree, directory, ignore_errors=True)
        directory.chmod(0o755)  # nginx's workers run as nobody when nginx starts as root
        socket_path = socket_folder(directory) / 'gunicorn.sock'
        # Stage 10 on, as the server's unit does: an empty folder for the workers' metrics.
        (metrics_dir := directory / 'metrics').mkdir()
        app_env = {
            'FLASK_CONFIG': 'production',
            'SECRET_KEY': secrets.token_hex(32),
            'PRODUCTION_DATABASE_URL': database_url,
            'TRUSTED_HOSTS': SITE_NAME,
            'PROMETHEUS_MULTIPROC_DIR': str(metrics_dir),
            **(env or {}),
        }
        gunicorn = start_gunicorn(stage_dir, bin_dir, directory, socket_path, app_env)
        cleanup.callback(stop_group, gunicorn, signal.SIGTERM)  # TERM: graceful shutdown
        certificate, key = make_certificate(directory)
        http_port, https_port, metrics_port = free_ports(3)
        site = render_site(
            stage_dir / 'deploy' / 'nginx.conf',
            http_port=http_port,
            https_port=https_port,
            socket_path=socket_path,
            certificate=certificate,
            key=key,
            snippet=shutil.copyfile(
                stage_dir / 'deploy' / 'nginx-tls.conf', directory / 'tls.conf'
            ),
            metrics_port=metrics_port,
        )
        (directory / 'site.conf').write_text(site_edit(site) if site_edit else site)
        https_url = f'https://{SITE_NAME}:{https_port}'
        metrics = f'127.0.0.1:{metrics_port};' in site  # stage 10 on: the monitor's block
        nginx_process = start_nginx(nginx, directory, lambda: url_answers(https_url, certificate))
        cleanup.callback(stop_group, nginx_process, signal.SIGQUIT)  # QUIT: graceful shutdown
        yield LoopbackSite(
            https_url=https_url,
            http_url=f'http://{SITE_NAME}:{http_port}',
            certificate=certificate,
            socket_path=socket_path,
            gunicorn_pid=gunicorn.pid,
            nginx_pid=nginx_process.pid,
            dir=directory,
            metrics_url=f'http://127.0.0.1:{metrics_port}' if metrics else None,
        )


def socket_folder(directory):
    """The folder of gunicorn's socket. gunicorn believes the X-Forwarded-* headers of
    whoever reaches its socket, as on the server: let nginx's workers in, no one else."""
    folder = directory / 'socket'
    folder.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(folder, 0, grp.getgrnam(NGINX_GROUP).gr_gid)
        folder.chmod(0o750)
    return folder


def start_gunicorn(stage_dir, bin_dir, directory, socket_path, app_env):
    """Start gunicorn with the stage's gunicorn.conf.py on ``socket_path``; wait for it."""
    env = {**os.environ, 'PATH': f'{bin_dir}{os.pathsep}{os.environ.get("PATH", "")}'}
    env.update(app_env, GUNICORN_BIND=f'unix:{socket_path}')
    log = directory / 'gunicorn.log'
    config = ['--config', 'gunicorn.conf.py', '--pid', directory / 'gunicorn.pid']
    gunicorn = start([bin_dir / 'gunicorn', *config, 'wsgi:app'], log, cwd=stage_dir, env=env)
    try:
        wait_until(lambda: socket_answers(socket_path), gunicorn, log, 'gunicorn')
    except BaseException:  # also Ctrl-C while it starts: stop it, by its group
        stop_group(gunicorn, signal.SIGTERM)
        raise
    return gunicorn


def start_nginx(nginx, directory, answers):
    """Start nginx with ``directory``'s site.conf; wait until ``answers()``."""
    temp_paths = TEMP_PATHS.format(dir=directory)
    user = f'\nuser {NGINX_USER} {NGINX_GROUP};' if os.geteuid() == 0 else ''
    main = MAIN_CONFIG.format(dir=directory, temp_paths=temp_paths, user=user)
    (directory / 'nginx.conf').write_text(main)
    log = directory / 'error.log'
    command = [nginx, '-c', directory / 'nginx.conf', '-p', directory, '-e', log]
    process = start(command, directory / 'nginx.log')
    try:
        wait_until(answers, process, log, 'nginx')
    except BaseException as error:  # also Ctrl-C while it starts: stop it, by its group
        stop_group(process, signal.SIGQUIT)
        if isinstance(error, StartError):
            raise StartError(f'{error}\n{(directory / "nginx.log").read_text()}') from None
        raise
    return process
