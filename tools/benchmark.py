"""Time ``nox -s stage01 stage02 stage03``: cold and warm, with uv and with virtualenv.

Run from the repository root: ``python3 tools/benchmark.py``. Each backend gets an
environment folder of its own in a temporary directory, so ``.nox/`` is left alone:
the first run in it is cold (no environments yet), the second warm. Package caches
(uv's and pip's) are left as they are, as on a reader's machine after the first day.
Prints a Markdown table, and how many embedded servers each run started.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SESSIONS = ['stage01', 'stage02', 'stage03']


def run(backend, envdir):
    env = {k: v for k, v in os.environ.items() if k != 'APP_DEPLOY_POSTGRES_URL'}
    start = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            'noxfile.py',
            '--envdir',
            envdir,
            '--force-venv-backend',
            backend,
            '-s',
            *SESSIONS,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f'{backend} run failed:\n{result.stdout}\n{result.stderr}')
    starts = result.stderr.count('Started an embedded PostgreSQL server')
    return seconds, starts


def main():
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ('uv', 'virtualenv'):
            envdir = os.path.join(tmp, backend)
            cold, cold_starts = run(backend, envdir)
            warm, warm_starts = run(backend, envdir)
            rows.append((backend, cold, warm, cold_starts, warm_starts))
    print('| backend | cold | warm | embedded servers started (cold, warm) |')
    print('| --- | ---: | ---: | --- |')
    for backend, cold, warm, cold_starts, warm_starts in rows:
        print(f'| {backend} | {cold:.1f} s | {warm:.1f} s | {cold_starts}, {warm_starts} |')
    (_, uv_cold, uv_warm, *_), (_, pip_cold, pip_warm, *_) = rows
    print(f'\nvirtualenv+pip / uv: cold {pip_cold / uv_cold:.1f}x, warm {pip_warm / uv_warm:.1f}x')


if __name__ == '__main__':
    main()
