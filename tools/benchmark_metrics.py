"""Measure what the app's metrics cost: stage 10 beside stage 09, as production serves them.

    python tools/benchmark_metrics.py --bin PATH/TO/VENV/bin [--seconds 5] [--rounds 3]

``--bin`` is the bin folder of an environment with stage 10's requirements, which are
stage 09's and prometheus_client: it serves both. Stage 09 is the baseline because it
is stage 10 without the metrics: the same app but for app/metrics.py and the lines
that install it (``diff -ruN stages/09-backups/app stages/10-monitoring/app``), the same
gunicorn settings but for the hook that drops an ended worker's files. Both run at once
on the same database, each as in production (see ``tools/loopback.py``): gunicorn
behind nginx over HTTPS, stage 10's workers writing their numbers to files in
PROMETHEUS_MULTIPROC_DIR.

For GET /, at 1 and at 50 concurrent clients, ``wrk`` measures requests per second,
the p50 and p99 latency and the CPU time the servers' processes spend per request,
as ``tools/benchmark_production.py`` does: each row is the median of ``--rounds``
measurements of ``--seconds``, the two stages taking turns. The target: the metrics
cost under 5% of the throughput.

Prints a Markdown table, what the metrics cost, and the machine it ran on.
"""

import contextlib
import os
import re
import sys
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import loopback  # noqa: E402
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

WITHOUT, WITH = 'stage 09, no metrics', 'stage 10, prometheus_client'
COMPARED = {WITHOUT: STAGES['09'], WITH: STAGES['10']}
CLIENTS = (1, 50)
TARGET = 0.05  # the share of the throughput that the metrics may cost
# What stage 10's /metrics says it counted of GET /, its workers' files added up.
COUNTED = re.compile(r'^app_http_requests_total\{method="GET",route="/",status="200"\} (\S+)$')


def main():
    args = arguments()
    with (
        scratch('app-deploy-benchmark-metrics-') as (database, work),
        contextlib.ExitStack() as servers_running,
    ):
        servers = []
        for label, stage in COMPARED.items():
            copy = migrated_copy(stage, args.bin, work, database)
            site = servers_running.enter_context(loopback.serve(copy, args.bin, database))
            masters = [site.gunicorn_pid, site.nginx_pid]
            servers.append(Server(label, site.https_url, masters, site.certificate))
        load = os.getloadavg()[0]
        cases = [(0, 'GET', clients) for clients in CLIENTS]  # no slow clients
        rows = measure_all(servers, cases, args, database, work)
        workers = len(site.worker_pids())  # stage 10's, as many as stage 09's
        counted = counted_requests(site.metrics_url)
    print(file=sys.stderr)
    report(rows, workers, args, (load, os.getloadavg()[0]), counted)


def arguments():
    args = parser(__doc__).parse_args()
    check(args.bin, COMPARED[WITH])
    return args


def counted_requests(metrics_url):
    """The requests to GET / that the app's metrics counted, over all the rounds."""
    with requests.Session() as http:
        http.trust_env = False  # loopback: no proxy from the environment
        text = http.get(f'{metrics_url}/metrics', timeout=10).text
    return sum(float(found[1]) for found in map(COUNTED.match, text.splitlines()) if found)


def report(rows, workers, args, load, counted):
    print(machine(workers, args, load))
    print()
    print('| request | clients | app | req/s | p50 ms | p99 ms | server CPU ms/req | failed |')
    print('| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |')
    for method, clients, _, app, rate, p50, p99, cpu, failed in rows:
        print(
            f'| {method} / | {clients} | {app} | {rate:.0f} | {p50:.1f} | {p99:.1f} | '
            f'{cpu:.2f} | {failed} |'
        )
    print()
    by = {(clients, app): (rate, p99, cpu) for _, clients, _, app, rate, _, p99, cpu, _ in rows}
    for clients in CLIENTS:
        (rate, p99, cpu), (rate_with, p99_with, cpu_with) = by[clients, WITHOUT], by[clients, WITH]
        lost = 1 - rate_with / rate
        print(
            f'GET / at {clients} client{"s" * (clients > 1)}: the metrics cost {lost:.1%} of the throughput '
            f'(target: under {TARGET:.0%}, {"met" if lost < TARGET else "missed"}), move '
            f'the p99 from {p99:.1f} to {p99_with:.1f} ms and the server CPU per request '
            f'by {(cpu_with - cpu) * 1000:+.0f} µs.'
        )
    print(f"Stage 10's /metrics counted {counted:.0f} requests to GET /, all its workers'.")


if __name__ == '__main__':
    main()
