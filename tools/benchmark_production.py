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

import contextlib
import itertools
import os
import signal
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import loopback  # noqa: E402
from tools.processes import free_port, stop_group  # noqa: E402
from tools.stages import STAGES  # noqa: E402
from tools.wrk import (  # noqa: E402
    Server,
    check,
    machine,
    measure_all,
    migrated_copy,
    parser,
    scratch,
)

SLOW_CLIENTS = 20


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
    with scratch('app-deploy-benchmark-production-') as (database, work):
        stage = migrated_copy(args.stage, args.bin, work, database)
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
            cases = itertools.product((0, SLOW_CLIENTS), ('GET', 'POST'), (1, 50))
            rows = measure_all(servers, cases, args, database, work)
            workers = len(site.worker_pids())  # all booted by now
    print(file=sys.stderr)
    report(rows, workers, args, (load, os.getloadavg()[0]))


def arguments():
    options = parser(__doc__)
    options.add_argument('--stage', type=Path, default=STAGES.get('05'), help='stage folder')
    args = options.parse_args()
    check(args.bin, args.stage)
    return args


def report(rows, workers, args, load):
    print(machine(workers, args, load))
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
