"""Time what a reader waits for, against the targets of issue 10, side by side in one run.

Run from the repository root: ``python3 tools/benchmark.py``. It clones the committed
repository twice into a temporary folder (``.nox/`` here is left alone) and measures,
with the package caches (uv's, pip's) as they are, as on a reader's machine after
the first day, and the embedded PostgreSQL:

- ``serve -- 03`` in a fresh clone, until its page first answers HTTP 200;
- the first ``python3 noxfile.py`` in a fresh clone (bootstrap, every session), cold:
  with an empty cache of stand-in servers (their root filesystem and provisioned
  images are made again, as on a new CI machine);
- the same again, warm (``-r``, the cache kept);
- warm runs of stage 01 alone, 01 and 02, and 01 to 03: the last is the three-stage
  target, and the steps between them what each further stage adds.

Prints two Markdown tables: the targets, with the CPU seconds each took (user +
system, all processes); and the full run and each of its sessions, cold and warm.
It takes as long as two full runs and a bit: about an hour on two cores.
"""

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The variables of a run we may be inside, and the reader's server: a reader's first
# run has none of them.
DROPPED = ('APP_DEPLOY_NOX_RUN', 'APP_DEPLOY_NOX_COMMAND', 'APP_DEPLOY_POSTGRES_URL')
ENV = {key: value for key, value in os.environ.items() if key not in DROPPED}


def cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def clone(folder, name):
    path = Path(folder) / name
    subprocess.run(['git', 'clone', '--quiet', ROOT, path], check=True)
    return path


FAILED = []  # what failed, said under the table: its time is not a fair figure


def timed(args, cwd, env=None):
    """Run ``args`` in ``cwd``; return (seconds, CPU seconds)."""
    start, start_cpu = time.perf_counter(), cpu()
    result = subprocess.run(args, cwd=cwd, env=env or ENV, capture_output=True, text=True)
    if result.returncode != 0:
        summary = [line for line in result.stderr.splitlines() if line.startswith('nox > * ')]
        FAILED.append(f'{" ".join(map(str, args))}: ' + '; '.join(summary)[-500:])
    return time.perf_counter() - start, cpu() - start_cpu


def serve_until_answered(cwd):
    """Seconds from ``python3 noxfile.py -s serve -- 03`` to its first HTTP 200."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    command = ['python3', 'noxfile.py', '-s', 'serve', '--', '03', '--port', str(port)]
    start, start_cpu = time.perf_counter(), cpu()
    server = subprocess.Popen(
        command, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        while server.poll() is None:
            try:
                with socket.create_connection(('127.0.0.1', port), timeout=1) as http:
                    http.sendall(b'GET / HTTP/1.0\r\n\r\n')
                    if b' 200 ' in http.recv(100):
                        return time.perf_counter() - start, cpu() - start_cpu
            except OSError:
                time.sleep(0.05)
        sys.exit(f'serve exited {server.returncode}')
    finally:
        os.killpg(server.pid, signal.SIGINT)  # Ctrl-C
        server.wait(60)


def full_run(cwd, env, *args):
    """``python3 noxfile.py ARGS``, every default session: (seconds, CPU seconds,
    {session: seconds}) as nox's report gives them."""
    report = Path(cwd) / f'report-{len(args)}.json'
    seconds, used = timed(['python3', 'noxfile.py', *args, '--report', report], cwd, env)
    sessions = json.loads(report.read_text())['sessions'] if report.exists() else []
    return seconds, used, {session['name']: session['duration'] for session in sessions}


def main():
    rows = []
    with tempfile.TemporaryDirectory(prefix='app-deploy-benchmark-') as folder:
        seconds, used = serve_until_answered(clone(folder, 'serve'))
        rows.append(('`serve -- 03`, fresh clone, to the first HTTP 200', 10, seconds, used))
        fresh = clone(folder, 'fresh')
        env = {**ENV, 'APP_DEPLOY_CACHE': str(Path(folder) / 'cache')}
        cold = full_run(fresh, env)
        rows.append(('first `python3 noxfile.py`, fresh clone', 40, *cold[:2]))
        warm = full_run(fresh, env, '-r')
        steps = {}
        for count in (1, 2, 3):
            sessions = [f'stage{number:02}' for number in range(1, count + 1)]
            steps[count] = timed(['python3', 'noxfile.py', '-r', '-s', *sessions], fresh, env)
        for count in (2, 3):
            seconds = steps[count][0] - steps[count - 1][0]
            used = steps[count][1] - steps[count - 1][1]
            rows.append((f'stage {count:02} added to a warm run', 6, seconds, used))
        rows.append(('warm `-s stage01 stage02 stage03`', 15, *steps[3]))
    print('| what | target | took | CPU | met |')
    print('| --- | ---: | ---: | ---: | --- |')
    for what, target, seconds, used in rows:
        met = 'yes' if seconds <= target else f'no, by {seconds - target:.1f} s'
        print(f'| {what} | ≤ {target} s | {seconds:.1f} s | {used:.1f} s | {met} |')
    print('\n| `python3 noxfile.py`, two at a time | cold | warm (`-r`) |')
    print('| --- | ---: | ---: |')
    print(f'| the full run | {cold[0]:.0f} s | {warm[0]:.0f} s |')
    for name, seconds in cold[2].items():
        print(f'| {name} | {seconds:.0f} s | {warm[2].get(name, float("nan")):.0f} s |')
    print(f'\n{os.cpu_count()} cores; load average at the end: {os.getloadavg()[0]:.1f}')
    for failure in FAILED:
        print(f'\nFailed: {failure}')


if __name__ == '__main__':
    main()
