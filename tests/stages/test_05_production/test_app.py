"""Stage 05's app under gunicorn behind nginx: database waits, outages, settings, hosts.

Through ``tools/loopback.py`` (nginx over HTTPS on loopback, the stage's own
``gunicorn.conf.py`` and ``deploy/nginx.conf``); gunicorn alone where a test is about
gunicorn starting. The nginx side (headers, limits, load, reload) is test_serving.py's.
The tests count status codes, never time anything.
"""

import os
import re
import secrets
import signal
import socket
import subprocess

import psycopg2
import pytest
import requests

from tests.helpers.markdown import readme_blocks
from tests.helpers.proxy import Proxy, read_to_end
from tests.helpers.reader import stored_names, wait_for
from tools import loopback
from tools.processes import free_port

pytestmark = pytest.mark.stages('05')

TOKEN = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
UNAVAILABLE = 'The database cannot be reached right now.'


class Browser:
    """One browser of the site: its own cookies, the throwaway certificate trusted."""

    def __init__(self, site):
        self.url = site.https_url
        self.http = requests.Session()
        self.http.trust_env = False  # loopback: no proxy, no CA bundle from the environment
        self.http.verify = str(site.certificate)
        self.pages = []  # every answer, to look for tracebacks in

    def get(self, path='/'):
        response = self.http.get(self.url + path, timeout=60)
        self.pages.append(response)
        return response

    def submit(self, name):
        """Fetch the form, post a name with its token (Flask-WTF wants the Referer)."""
        token = TOKEN.search(self.get().text)[1]
        response = self.http.post(
            self.url + '/',
            data={'csrf_token': token, 'name': name},
            headers={'Referer': self.url + '/'},
            allow_redirects=False,
            timeout=60,
        )
        self.pages.append(response)
        return response


def assert_unavailable(response):
    """The app's 503 page, with Retry-After: not nginx's 502 or 504 after a hung request."""
    assert response.status_code == 503, response.text
    assert int(response.headers['Retry-After']) > 0
    assert UNAVAILABLE in response.text


def assert_no_traceback(pages):
    for page in pages:
        assert not re.search(r'Traceback|File "/|psycopg2|sqlalchemy', page.text), page.text


def test_locked_table_gives_the_503_page_instead_of_a_hung_request(production_env, database):
    with loopback.serve(production_env.dir, production_env.bin, database) as site:
        browser = Browser(site)
        assert browser.submit('before').status_code == 302
        token_page = browser.get()
        holder = psycopg2.connect(database)
        try:
            with holder.cursor() as cursor:
                cursor.execute('LOCK TABLE names IN ACCESS EXCLUSIVE MODE')
            assert_unavailable(browser.get())
            token = TOKEN.search(token_page.text)[1]
            during = browser.http.post(
                site.https_url + '/',
                data={'csrf_token': token, 'name': 'during'},
                headers={'Referer': site.https_url + '/'},
                timeout=60,
            )
            browser.pages.append(during)
            assert_unavailable(during)
            assert browser.get('/health').status_code == 200  # the database itself answers
        finally:
            holder.rollback()
            holder.close()
        assert browser.submit('after').status_code == 302
        assert browser.get().status_code == 200
        log = site.gunicorn_log()
    assert stored_names(database) == ['before', 'after']
    assert '<3>app: Database unavailable: canceling statement due to lock timeout' in log
    assert 'WORKER TIMEOUT' not in log
    assert_no_traceback(browser.pages)


@pytest.fixture
def proxied(production_env, database):
    """The site on a database it reaches through a Proxy: (proxy, site, browser)."""
    proxy = Proxy(database)
    proxy.start()
    try:
        with loopback.serve(production_env.dir, production_env.bin, proxy.url) as site:
            yield proxy, site, Browser(site)
    finally:
        proxy.stop()


def test_database_outage_gives_503_and_recovers_without_a_restart(proxied, database):
    proxy, site, browser = proxied
    assert browser.submit('before').status_code == 302
    workers = site.worker_pids()
    proxy.stop()
    try:
        for _ in range(3):  # more than one worker sees it
            assert_unavailable(browser.get())
        health = browser.get('/health')
        assert health.status_code == 503
        assert health.json() == {'status': 'unavailable'}
    finally:
        proxy.start()
    assert browser.get('/health').json() == {'status': 'ok'}
    assert browser.submit('after').status_code == 302
    assert browser.get().status_code == 200
    # No worker was restarted (one more may have started since: they start apace).
    assert set(workers) <= set(site.worker_pids())
    assert stored_names(database) == ['before', 'after']
    assert_no_traceback(browser.pages)


def test_silent_database_gives_503_after_connect_timeout(proxied):
    """A database host that accepts connections and never answers: without
    connect_timeout the worker hangs until gunicorn kills it and nginx answers 502."""
    proxy, site, browser = proxied
    assert browser.get().status_code == 200
    proxy.stop()
    with socket.socket() as silent:  # on the proxy's port: accepts, never answers
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        silent.bind(('127.0.0.1', proxy.port))
        silent.listen()
        assert browser.get('/health').status_code == 503
        assert_unavailable(browser.get())
    proxy.start()
    assert browser.get().status_code == 200
    assert 'WORKER TIMEOUT' not in site.gunicorn_log()
    assert_no_traceback(browser.pages)


def gunicorn(production_env, env, socket_path):
    """Start gunicorn as the unit does, without nginx; return how it ended."""
    return subprocess.run(
        [production_env.bin / 'gunicorn', '--config', 'gunicorn.conf.py', 'wsgi:app'],
        cwd=production_env.dir,
        env={**production_env.env, 'GUNICORN_BIND': f'unix:{socket_path}', **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    'change, message',
    [
        ({'FLASK_CONFIG': None}, 'Error: FLASK_CONFIG is not set; set it to one of: '),
        ({'SECRET_KEY': 'dev'}, 'Error: SECRET_KEY is too short; use at least 32 random bytes'),
        ({'SECRET_KEY': 'x' * 31}, 'Error: SECRET_KEY is too short; use at least 32 random bytes'),
        ({'TRUSTED_HOSTS': None}, 'Error: TRUSTED_HOSTS is not set'),
        ({'FLASK_DEBUG': '1'}, 'Error: FLASK_DEBUG is on'),
    ],
    ids=['no FLASK_CONFIG', 'SECRET_KEY dev', 'SECRET_KEY 31 bytes', 'no TRUSTED_HOSTS', 'debug'],
)
def test_configuration_error_stops_gunicorn_with_one_line(
    production_env, tmp_path, change, message
):
    for name, value in change.items():
        production_env.env.pop(name, None)
        if value is not None:
            production_env.env[name] = value
    result = gunicorn(production_env, {}, tmp_path / 'gunicorn.sock')
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith(message), lines
    assert production_env.env.get('SECRET_KEY', '-') not in lines[0]  # the key is never printed


def http_over_unix(path, request):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(60)
        sock.connect(str(path))
        sock.sendall(request.encode())
        return read_to_end(sock)


@pytest.mark.parametrize('host', ['evil.example', f'{loopback.SITE_NAME}.evil.example'])
def test_unknown_host_is_refused_by_flask_too(production_env, database, host):
    """nginx closes the connection on an unknown Host; should a request reach gunicorn
    some other way, Flask's TRUSTED_HOSTS refuses it."""
    with loopback.serve(production_env.dir, production_env.bin, database) as site:
        socket_path = site.socket_path
        headers = 'X-Forwarded-Proto: https\r\nConnection: close\r\n'
        good = http_over_unix(
            socket_path, f'GET / HTTP/1.1\r\nHost: {loopback.SITE_NAME}\r\n{headers}\r\n'
        )
        bad = http_over_unix(socket_path, f'GET / HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n')
        forwarded = http_over_unix(
            socket_path,
            f'GET / HTTP/1.1\r\nHost: {loopback.SITE_NAME}\r\nX-Forwarded-Host: {host}\r\n{headers}\r\n',
        )
    assert good.startswith(b'HTTP/1.1 200 ')
    for answer in (bad, forwarded):
        assert answer.startswith(b'HTTP/1.1 400 '), answer[:200]
        assert b'<h1>400 Bad Request</h1>' in answer
        assert b'Traceback' not in answer


def test_error_pages_name_the_error_and_nothing_is_stored_twice(production_env, database):
    with loopback.serve(production_env.dir, production_env.bin, database) as site:
        browser = Browser(site)
        names = [f'reader {number}' for number in range(5)]
        for name in names:
            assert browser.submit(name).status_code == 302
        assert browser.get('/no-such-page').status_code == 404
        assert browser.get('/?page=99').status_code == 404
        assert browser.get('/?page=-1').status_code == 404
        assert browser.get('/?page=2').status_code == 404  # five names: one page
        page = browser.get()
    assert stored_names(database) == names
    assert re.findall(r'<li>(.*?), added', page.text) == names[::-1]
    for answer in browser.pages:
        if answer.status_code == 404:
            assert '<h1>404 Not Found</h1>' in answer.text
    assert_no_traceback(browser.pages)


def test_the_server_installs_no_test_tools(stage_dir):
    """requirements.txt is what runs on the server; pytest comes from requirements-dev.txt."""
    runtime = (stage_dir / 'requirements.txt').read_text().lower()
    dev = (stage_dir / 'requirements-dev.txt').read_text().lower().splitlines()
    assert 'gunicorn==' in runtime
    assert 'pytest' not in runtime
    assert '-r requirements.txt' in dev
    assert any(line.startswith('pytest==') for line in dev)


def test_readme_runs_gunicorn_by_hand(reader, database):
    """The README's "Try gunicorn" block, typed into bash as it stands (the database
    URL filled in, a free port in GUNICORN_BIND): the page and /health answer."""
    (block,) = [body for body in readme_blocks(reader.dir, 'console') if 'gunicorn ' in body]
    lines = block.splitlines()
    assert lines[-1] == 'gunicorn --config gunicorn.conf.py wsgi:app'
    url = next(line for line in lines if line.startswith('export PRODUCTION_DATABASE_URL='))
    block = block.replace(url, f'export PRODUCTION_DATABASE_URL="{database}"')
    reader.env.update(
        FLASK_APP='wsgi.py', FLASK_CONFIG='production', SECRET_KEY=secrets.token_hex(32)
    )
    reader.env.update(PRODUCTION_DATABASE_URL=database, TRUSTED_HOSTS='127.0.0.1')
    reader.run('flask db upgrade', preload=True)
    for name in ('FLASK_CONFIG', 'SECRET_KEY', 'PRODUCTION_DATABASE_URL', 'TRUSTED_HOSTS'):
        del reader.env[name]  # from the README's lines alone
    port = free_port()
    env = {**reader.env, 'GUNICORN_BIND': f'127.0.0.1:{port}'}
    with open(reader.dir / 'gunicorn.log', 'w+') as log:
        process = subprocess.Popen(
            ['bash', '-c', block],
            cwd=reader.dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            page = wait_for(f'http://127.0.0.1:{port}/', process)
            assert page is not None, (reader.dir / 'gunicorn.log').read_text()
            health = requests.get(f'http://127.0.0.1:{port}/health', timeout=30)
        finally:
            os.killpg(process.pid, signal.SIGTERM)  # bash and gunicorn, started together
            process.wait(60)
        output = (reader.dir / 'gunicorn.log').read_text()
    assert page.status_code == 200 and 'Hello World!' in page.text
    assert health.json() == {'status': 'ok'}
    assert '"GET / HTTP/1.1" 200' in output  # a line per request
