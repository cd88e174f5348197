"""Run a stage the way a reader does: from a copy of its directory, by its README.

Also the helpers the test modules share: README blocks, rows read back from
PostgreSQL, databases with the run's prefix, waiting for a server.
"""

import atexit
import contextlib
import html
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests
import urllib3

from tools import noxrun, postgres
from tools.processes import free_port
from tools.stages import setup_command

NAMES = ['Foobar', 'Mark', 'Joanna']  # what the READMEs' walkthroughs type into the form
# The stages whose app is the names form (a test for them all is marked with these);
# a stage that carries the app unchanged runs such a test no more (APP, below).
FORM_STAGES = ('02', '03', '04', '05', '06', '07', '08', '09', '10')
# What a stage's app is made of: the ``covers`` of a test of the app (tests/conftest.py).
APP = ('app', 'config.py', 'wsgi.py', 'migrations', 'requirements.txt', '.env.example')


def stored_names(url):
    """The names in the stage's table at ``url``, in the order they were stored."""
    rows = postgres.execute(url, 'SELECT name FROM names ORDER BY id')
    return [name for (name,) in rows]


def listed_names(page):
    """The names the page lists, as the reader reads them, in the page's order.

    Stage 03 lists each name alone; stage 04 adds when it was added ("Mark, added
    <time>...</time>"), which is left out here.
    """
    items = re.findall(r'<li>(.*?)</li>', page, re.S)
    return [
        html.unescape(re.sub(r', added <time[^>]*>.*?</time>$', '', item, flags=re.S))
        for item in items
    ]


def tables(url):
    """The tables in the public schema of the database at ``url``, sorted."""
    rows = postgres.execute(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return sorted(name for (name,) in rows)


def database_prefix():
    """The prefix of every database the tests make: the nox session's, else pytest's own.

    It starts ``app_deploy_nox_<run>``, so whatever a stopped run leaves is dropped
    at the run's end (noxfile.py) and never mistaken for a reader's database.
    """
    return os.environ.get('APP_DEPLOY_DATABASE_PREFIX') or noxrun.database_prefix('pytest')


@contextlib.contextmanager
def new_database(server):
    """A new, empty database on ``server`` with the tests' prefix, dropped after."""
    name = postgres.unique_name(database_prefix())
    url = postgres.create_database(server, name)
    try:
        yield url
    finally:
        postgres.drop_database(server, name)


def wait_for(url, process, seconds=30):
    """Wait until ``url`` answers over HTTP; return the response (None if ``process`` ended)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None
        try:
            return requests.get(url, timeout=1)
        except requests.ConnectionError:
            time.sleep(0.1)
    raise AssertionError(f'{url} did not answer in {seconds} s')


class Preloaded:
    """A tests/preload.py server for one stage environment: one-shot flask commands, fast."""

    def __init__(self, bin_dir):
        self.socket = noxrun.folder() / f'preload-{os.getpid()}-{len(PRELOADED)}.sock'
        script = Path(__file__).with_name('preload.py')
        self.process = subprocess.Popen(
            [Path(bin_dir) / 'python', script, self.socket], stdin=subprocess.DEVNULL
        )
        atexit.register(self.stop)
        while not self.socket.exists():
            if self.process.poll() is not None:
                raise AssertionError(f'{script} exited {self.process.returncode}')
            time.sleep(0.01)

    def run(self, argv, cwd, env, input, timeout):
        """Run ``argv`` (a flask command) as subprocess.run would; return the same result."""
        files = [cwd.parent / f'{cwd.name}.{name}' for name in ('stdin', 'stdout', 'stderr')]
        files[0].write_text(input or '')
        request = {'argv': argv, 'cwd': str(cwd), 'env': env, 'files': [str(f) for f in files]}
        with socket.socket(socket.AF_UNIX) as connection:
            connection.connect(str(self.socket))
            connection.settimeout(timeout)
            stream = connection.makefile('rw')
            stream.write(json.dumps(request) + '\n')
            stream.flush()
            pid = int(stream.readline())
            try:
                code = int(stream.readline())
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired(argv, timeout) from None
        stdout, stderr = (path.read_text() for path in files[1:])
        return subprocess.CompletedProcess(argv, code, stdout, stderr)

    def stop(self):
        self.process.terminate()
        self.process.wait()
        self.socket.unlink(missing_ok=True)


PRELOADED = {}  # bin directory -> its Preloaded server


class Reader:
    """A shell in a copy of one stage, with the stage's virtual environment on PATH."""

    def __init__(self, stage_dir, workdir, bin_dir):
        self.dir = Path(workdir) / Path(stage_dir).name
        ignore = shutil.ignore_patterns('.venv', '__pycache__', '.env', '.pytest_cache')
        shutil.copytree(stage_dir, self.dir, ignore=ignore)
        self.bin = Path(bin_dir)
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(('FLASK_', 'PYTHON'))
            and not key.endswith(('DATABASE_URL', 'SECRET_KEY'))
        }
        self.env['PATH'] = f'{self.bin}{os.pathsep}{self.env.get("PATH", "")}'
        self.env['VIRTUAL_ENV'] = str(self.bin.parent)

    def develop_on(self, url):
        """Set the app up for development on the database at ``url``, tables made.

        The tables come from ``flask db upgrade`` where the stage has migrations
        (stage 04 on), else from ``flask create-tables``.
        """
        self.env.update(FLASK_APP='wsgi.py', FLASK_CONFIG='development', DEV_DATABASE_URL=url)
        return self.run(setup_command(self.dir), preload=True)

    def export(self, line, **values):
        """Apply an ``export NAME=value`` line, replacing ``<placeholder>`` values."""
        assert line.startswith('export '), line
        name, _, value = shlex.split(line[len('export ') :])[0].partition('=')
        self.env[name] = values.get(name, value)

    def command(self, command):
        args = shlex.split(command)
        executable = self.bin / args[0]
        return [str(executable) if executable.exists() else args[0], *args[1:]]

    def run(self, command, input=None, env=None, check=True, timeout=60, preload=False):
        """Run ``command`` in the stage copy; return the finished process.

        With ``preload``, a flask command runs in a fork of a process that has
        imported the stage's libraries already (tests/preload.py): the same command,
        environment, folder, output and exit code, in a tenth of the time. Where the
        process itself is under test (the README walkthroughs), leave it off.
        """
        args, env = self.command(command), {**self.env, **(env or {})}
        if preload and command.startswith('flask '):
            if self.bin not in PRELOADED:
                PRELOADED[self.bin] = Preloaded(self.bin)
            result = PRELOADED[self.bin].run(args, self.dir, env, input, timeout)
        else:
            result = subprocess.run(
                args,
                cwd=self.dir,
                env=env,
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        if check and result.returncode != 0:
            raise AssertionError(
                f'{command} exited {result.returncode}\n{result.stdout}\n{result.stderr}'
            )
        return result

    @contextlib.contextmanager
    def serve(self, command='flask run', env=None, port=None):
        """Start ``command`` as a server and yield a `Site` for it; stop it after."""
        port = port or free_port()
        log = open(self.dir / f'server-{port}.log', 'w+')
        process = subprocess.Popen(
            self.command(command),
            cwd=self.dir,
            env={**self.env, 'FLASK_RUN_PORT': str(port), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        site = Site(f'http://127.0.0.1:{port}', process, log)
        try:
            site.wait_until_up()
            yield site
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


class Site:
    """The running app, seen over HTTP by one browser-like client."""

    def __init__(self, url, process, log):
        self.url = url
        self.process = process
        self._log = log
        self.http = requests.Session()

    @property
    def log(self):
        self._log.flush()
        return Path(self._log.name).read_text()

    def wait_until_up(self, seconds=30):
        if wait_for(self.url, self.process, seconds) is None:
            raise AssertionError(f'the server exited:\n{self.log}')

    def get(self, path='/', **kwargs):
        return self.http.get(self.url + path, timeout=30, **kwargs)

    def csrf_token(self):
        page = self.get().text
        return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)[1]

    def post(self, **kwargs):
        """POST to the form's page as given: ``data``, ``headers``..."""
        return self.http.post(self.url + '/', timeout=30, **kwargs)

    def submit(self, name, **kwargs):
        """Fill in the form as a browser does: fetch the page, post with its token."""
        return self.post(data={'csrf_token': self.csrf_token(), 'name': name}, **kwargs)

    def fresh(self):
        """Another client of the same site, with its own cookies."""
        return Site(self.url, self.process, self._log)


class PooledSite:
    """A served stage (06 on) through the urllib3 ``pool``, as the host name ``host``:
    nginx's site on a stand-in server, or a container's gunicorn."""

    def __init__(self, pool, host):
        self.pool, self.host = pool, host

    def get(self, path='/', **kwargs):
        return self.pool.request('GET', path, headers={'Host': self.host}, **kwargs)

    def add(self, name):
        """Type ``name`` into the form and send it, as a browser does: the form's CSRF
        token, the session cookie, and (checked over HTTPS) the page as the referrer."""
        page = self.get()
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.data.decode())
        cookie = page.headers['Set-Cookie'].split(';')[0]
        answer = self.pool.request(
            'POST',
            '/',
            fields={'csrf_token': token[1], 'name': name},
            encode_multipart=False,
            headers={
                'Host': self.host,
                'Cookie': cookie,
                'Referer': f'{self.pool.scheme}://{self.host}/',
            },
            redirect=False,
        )
        assert answer.status == 302, answer.data.decode()

    def names(self):
        return listed_names(self.get().data.decode())

    def wait(self, seconds=60):
        """Wait until /health answers 200."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(urllib3.exceptions.HTTPError):
                if self.get('/health').status == 200:
                    return
            time.sleep(0.5)
        raise AssertionError(f'{self.host} did not answer /health in {seconds} s')
