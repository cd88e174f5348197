"""Compare nginx + gunicorn with ``flask run`` on stage 05, side by side, on this machine.

    python tools/benchmark_production.py --bin PATH/TO/VENV/bin [--seconds 5] [--rounds 3]

``--bin`` is the bin folder of an environment with the stage's requirements (a nox
stage session's, for one). Both servers run at once on the same database: ``flask run``
(the development server, threaded) over HTTP, and the stage's gunicorn behind nginx
over HTTPS (see ``tools/loopback.py``). For GET / and for a POST of the form, at 1
and at 50 concurrent clients, alone and with 20 slow clients attached (each sending a
request body at 1 byte/s), it measures requests per second, the p50 and p99 latency
and the CPU time the server's processes spend per request (which other work on the
machine disturbs far less than it does the rest).

The load comes from ``wrk`` (``apt-get install wrk``), whose keep-alive connections
are the clients; it costs the machine far less than a Python client would. Each
measurement lasts ``--seconds``, each row is the median of ``--rounds`` of them, the
two servers taking turns, and the table is emptied of names before each. nginx's rate
limit on posts is lifted for the run (it would answer most posts with 429): the POST
rows measure serving, not limiting.

Prints a Markdown table and the machine it ran on.
"""

import argparse
import contextlib
import http.client
import itertools
import os
import platform
import re
import secrets
import shutil
import signal
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import loopback, postgres  # noqa: E402
from tools.processes import children, free_port, stat_fields, stop_group  # noqa: E402
from tools.stages import STAGES  # noqa: E402

TOKEN = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
SLOW_CLIENTS = 20


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


def lift_post_limit(site):
    return loopback.substitute(site, 'limit_req zone=app_deploy_posts burst=10 nodelay;', '')


@contextlib.contextmanager
def dev_server(stage_dir, bin_dir, database_url):
    """``flask run`` on a free port, as Part 2 runs it."""
    port = free_port()
    env = {
        **os.environ,
        'PATH': f'{bin_dir}{os.pathsep}{os.environ.get("PATH", "")}',
        'FLASK_APP': 'wsgi.py',
        'FLASK_CONFIG': 'development',
        'DEV_DATABASE_URL': database_url,
    }
    log = Path(stage_dir) / 'flask-run.log'
    process = loopback.start(
        [bin_dir / 'flask', 'run', '--port', str(port)], log, cwd=stage_dir, env=env
    )
    try:
        loopback.wait_until(lambda: socket_open(port), process, log, 'flask run')
        yield f'http://127.0.0.1:{port}', process.pid
    finally:
        stop_group(process, signal.SIGTERM)


def socket_open(port):
    with socket.socket() as sock:
        return sock.connect_ex(('127.0.0.1', port)) == 0


def main():
    args = arguments()
    server_url = postgres.server_url()
    name = postgres.unique_name('app_deploy_benchmark')
    database = postgres.create_database(server_url, name)
    work = Path(tempfile.mkdtemp(prefix='app-deploy-benchmark-production-'))
    try:
        stage = migrated_copy(args, work, database)
        with (
            dev_server(stage, args.bin, database) as (dev_url, dev_pid),
            loopback.serve(stage, args.bin, database, site_edit=lift_post_limit) as site,
        ):
            servers = [
                Server('flask run', dev_url, [dev_pid]),
                Server(
                    'nginx + gunicorn',
                    site.https_url,
                    [site.gunicorn_pid, site.nginx_pid],
                    site.certificate,
                ),
            ]
            load = os.getloadavg()[0]
            rows = measure_all(servers, args, database, work)
            workers = len(site.worker_pids())  # all booted by now
        print(file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        postgres.drop_database(server_url, name)
    report(rows, workers, args, (load, os.getloadavg()[0]))


def arguments():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--bin', type=Path, required=True, help="the stage environment's bin")
    parser.add_argument('--stage', type=Path, default=STAGES.get('05'), help='stage folder')
    parser.add_argument('--seconds', type=int, default=5, help='length of each measurement')
    parser.add_argument('--rounds', type=int, default=3, help='measurements per row')
    args = parser.parse_args()
    if not shutil.which('wrk'):
        sys.exit('wrk is missing: sudo apt-get install -y --no-install-recommends wrk')
    if not (args.bin / 'gunicorn').exists():
        sys.exit(f'{args.bin} has no gunicorn: pip install -r {args.stage}/requirements.txt')
    return args


def migrated_copy(args, work, database):
    """A copy of the stage in ``work``, its tables made in ``database``."""
    stage = shutil.copytree(args.stage, work / args.stage.name)
    env = {**os.environ, 'FLASK_APP': 'wsgi.py', 'FLASK_CONFIG': 'production'}
    env.update(PRODUCTION_DATABASE_URL=database, SECRET_KEY=secrets.token_hex(32))
    env.update(TRUSTED_HOSTS='127.0.0.1')
    upgrade = subprocess.run(
        [args.bin / 'flask', 'db', 'upgrade'], cwd=stage, env=env, capture_output=True
    )
    if upgrade.returncode != 0:
        sys.exit(f'flask db upgrade failed:\n{upgrade.stdout.decode()}{upgrade.stderr.decode()}')
    return stage


def measure_all(servers, args, database, work):
    """Each row (method, clients, slow clients), each server: the median of the rounds."""
    rows = []
    for slow, method, clients in itertools.product((0, SLOW_CLIENTS), ('GET', 'POST'), (1, 50)):
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


def report(rows, workers, args, load):
    print(
        f'{os.cpu_count()} cores, {platform.system()} {platform.release()}, load average '
        f'{load[0]:.1f} at the start and {load[1]:.1f} at the end; gunicorn with {workers} '
        f'sync workers; each row the median of {args.rounds} runs of {args.seconds} s.'
    )
    print()
    print(
        '| request | clients | slow clients | server | req/s | p50 ms | p99 ms '
        '| server CPU ms/req | failed |'
    )
    print('| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |')
    for method, clients, slow, server, rate, p50, p99, cpu, failed in rows:
        print(
            f'| {method} / | {clients} | {slow} | {server} | {rate:.0f} | {p50:.1f} | '
            f'{p99:.1f} | {cpu:.2f} | {failed} |'
        )
    print()
    by = {(m, c, s, server): rate for m, c, s, server, rate, *_ in rows}
    p99s = {(m, c, s, server): p99 for m, c, s, server, _, _, p99, *_ in rows}
    for method in ('GET', 'POST'):
        ratio = by[method, 50, 0, 'nginx + gunicorn'] / by[method, 50, 0, 'flask run']
        moved = (
            p99s[method, 50, SLOW_CLIENTS, 'nginx + gunicorn']
            / p99s[method, 50, 0, 'nginx + gunicorn']
        )
        print(
            f'{method} at 50 clients: nginx + gunicorn serves {ratio:.2f}x the requests of '
            f'flask run; {SLOW_CLIENTS} slow clients move its p99 {moved:.2f}x.'
        )


if __name__ == '__main__':
    main()
