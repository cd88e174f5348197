"""What the benchmarks that load servers with ``wrk`` share (benchmark_production.py,
benchmark_metrics.py): their options, a stage's copy with its tables, one measurement,
the median of rounds in which the servers take turns, and the machine they ran on."""

import argparse
import contextlib
import http.client
import os
import platform
import re
import secrets
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from tools import postgres
from tools.processes import children, stat_fields

TOKEN = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


@contextlib.contextmanager
def scratch(prefix):
    """A database and a folder of the benchmark's own, (URL, folder), deleted after."""
    server_url = postgres.server_url()
    name = postgres.unique_name('app_deploy_benchmark')
    database = postgres.create_database(server_url, name)
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield database, work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        postgres.drop_database(server_url, name)


def parser(doc):
    """The options every benchmark takes (--bin, --seconds, --rounds); add yours."""
    parser = argparse.ArgumentParser(description=doc.split('\n\n')[0])
    parser.add_argument('--bin', type=Path, required=True, help="the stage environment's bin")
    parser.add_argument('--seconds', type=int, default=5, help='length of each measurement')
    parser.add_argument('--rounds', type=int, default=3, help='measurements per row')
    return parser


def check(bin_dir, stage):
    """Exit, saying how to install it, if wrk or the stage's gunicorn is missing."""
    if not shutil.which('wrk'):
        sys.exit('wrk is missing: sudo apt-get install -y --no-install-recommends wrk')
    if not (bin_dir / 'gunicorn').exists():
        sys.exit(f'{bin_dir} has no gunicorn: pip install -r {stage}/requirements.txt')


class Server:
    """Where a server listens, how to open a connection to it, and its processes."""

    def __init__(self, name, url, masters, certificate=None):
        self.name, self.url, self.masters = name, urlsplit(url), masters
        self.context = ssl.create_default_context(cafile=certificate) if certificate else None

    def cpu_seconds(self):
        """The CPU time its processes (the masters and their children) have used."""
        pids = [*self.masters, *(pid for pid in self.masters for pid in children(pid))]
        ticks = 0
        for pid in pids:
            with contextlib.suppress(OSError):
                fields = stat_fields(pid)
                ticks += int(fields[11]) + int(fields[12])  # utime and stime
        return ticks / os.sysconf('SC_CLK_TCK')

    def connect(self, timeout=30):
        host, port = self.url.hostname, self.url.port
        if self.context:
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=self.context)
        return http.client.HTTPConnection(host, port, timeout=timeout)


def form_session(connection):
    """GET the page as a browser does: return the headers a post of the form needs."""
    connection.request('GET', '/')
    response = connection.getresponse()
    token = TOKEN.search(response.read().decode())[1]
    cookie = response.getheader('Set-Cookie').split(';')[0]
    return token, cookie


def slow_client(server, stop):
    """A POST whose body comes at 1 byte/s, until ``stop`` is set."""
    with contextlib.suppress(OSError):
        sock = socket.create_connection((server.url.hostname, server.url.port), timeout=30)
        if server.context:
            sock = server.context.wrap_socket(sock, server_hostname=server.url.hostname)
        with sock:
            sock.sendall(
                f'POST / HTTP/1.1\r\nHost: {server.url.netloc}\r\n'
                'Content-Type: application/x-www-form-urlencoded\r\n'
                'Content-Length: 1000\r\n\r\n'.encode()  # under nginx's limit
            )
            while not stop.wait(1):
                sock.sendall(b'x')


# wrk's script: the request to send, and the figures to print at the end (in µs).
WRK_SCRIPT = """
wrk.method = "{method}"
wrk.body = {body}
wrk.headers = {{{headers}}}
function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    errors.connect + errors.read + errors.write + errors.status + errors.timeout))
end
"""


def wrk_script(server, method, directory):
    """The wrk script for ``method``: a POST of the form carries its token and cookie."""
    body, headers = 'nil', {}
    if method == 'POST':
        token, cookie = form_session(server.connect())
        body = f'"{urlencode({"csrf_token": token, "name": "Bench"})}"'
        headers = {
            'Content-Type': 'application/x-www-form-urlencoded',
            'Cookie': cookie,
            'Referer': f'{server.url.scheme}://{server.url.netloc}/',
        }
    path = Path(directory) / f'{method.lower()}.lua'
    fields = ', '.join(f'["{name}"] = "{value}"' for name, value in headers.items())
    path.write_text(WRK_SCRIPT.format(method=method, body=body, headers=fields))
    return path


def measure(server, method, clients, seconds, slow, directory):
    """Requests per second, p50 and p99 in ms, the server's CPU ms per request, and the
    failed requests (errors, 4xx, 5xx)."""
    script = wrk_script(server, method, directory)
    stop = threading.Event()
    slow_threads = [threading.Thread(target=slow_client, args=(server, stop)) for _ in range(slow)]
    for thread in slow_threads:
        thread.start()
    time.sleep(1 if slow else 0)  # let them connect and start dribbling
    cpu = server.cpu_seconds()
    try:
        threads = min(clients, 2)
        result = subprocess.run(
            ['wrk', f'-t{threads}', f'-c{clients}', f'-d{seconds}s', '--timeout', '30s']
            + ['-s', script, f'{server.url.scheme}://{server.url.netloc}/'],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
    finally:
        stop.set()
        for thread in slow_threads:
            thread.join()
    figures = re.search(r'^RESULT (\d+) (\d+) (\d+) (\d+) (\d+)$', result.stdout, re.M)
    if not figures:
        sys.exit(f'wrk failed:\n{result.stdout}{result.stderr}')
    cpu = server.cpu_seconds() - cpu
    requests, duration, p50, p99, failed = map(int, figures.groups())
    return requests / duration * 1e6, p50 / 1000, p99 / 1000, cpu / requests * 1000, failed


def migrated_copy(stage, bin_dir, work, database):
    """A copy of ``stage`` in ``work``, its tables made in ``database``."""
    stage = shutil.copytree(stage, work / stage.name)
    env = {**os.environ, 'FLASK_APP': 'wsgi.py', 'FLASK_CONFIG': 'production'}
    env.update(PRODUCTION_DATABASE_URL=database, SECRET_KEY=secrets.token_hex(32))
    env.update(TRUSTED_HOSTS='127.0.0.1')
    upgrade = subprocess.run(
        [bin_dir / 'flask', 'db', 'upgrade'], cwd=stage, env=env, capture_output=True
    )
    if upgrade.returncode != 0:
        sys.exit(f'flask db upgrade failed:\n{upgrade.stdout.decode()}{upgrade.stderr.decode()}')
    return stage


def measure_all(servers, cases, args, database, work):
    """Each row (slow clients, method, clients) of ``cases``, each server: the median of
    the rounds, as (method, clients, slow clients, server name, *figures). The table of
    names is emptied before each measurement."""
    rows = []
    for slow, method, clients in cases:
        runs = {server.name: [] for server in servers}
        for number in range(args.rounds):
            # Alternate who goes first, so neither always meets the machine's other work
            # in the same state.
            for server in servers[:: 1 if number % 2 else -1]:
                postgres.execute(database, 'TRUNCATE names')
                runs[server.name].append(
                    measure(server, method, clients, args.seconds, slow, work)
                )
                print('.', end='', file=sys.stderr, flush=True)
        for server, figures in runs.items():
            rows.append((method, clients, slow, server, *median(figures)))
    return rows


def median(runs):
    """The median of each figure over the runs; failed requests are summed."""
    rates, p50s, p99s, cpus, failed = zip(*runs, strict=True)
    middle = statistics.median
    return middle(rates), middle(p50s), middle(p99s), middle(cpus), sum(failed)


def machine(workers, args, load):
    """The machine and the run, in one line: cores, system, load average at the start
    and at the end (``load``), gunicorn's workers, rounds and their length."""
    return (
        f'{os.cpu_count()} cores, {platform.system()} {platform.release()}, load average '
        f'{load[0]:.1f} at the start and {load[1]:.1f} at the end; gunicorn with {workers} '
        f'sync workers; each row the median of {args.rounds} runs of {args.seconds} s.'
    )
