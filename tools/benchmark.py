"""Time ``nox -s stage01 stage02 stage03`` with uv and with virtualenv + pip.

Run from the repository root: ``python3 tools/benchmark.py``. For each backend, in an
environment folder of its own under a temporary directory (``.nox/`` is left alone):

- install only, cold: ``--install-only`` with no environments yet, which is the part
  the backend decides;
- cold: the whole run, environments made anew;
- warm: the whole run again with ``-r``, reusing the environments.

Package caches (uv's and pip's) are left as they are, as on a reader's machine after
the first day. Prints a Markdown table, and how many embedded PostgreSQL servers each
whole run started.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SESSIONS = ['stage01', 'stage02', 'stage03']


def run(backend, envdir, *options):
    """Run the stage sessions; return the seconds taken and the servers started."""
    env = {k: v for k, v in os.environ.items() if k != 'APP_DEPLOY_POSTGRES_URL'}
    command = [sys.executable, 'noxfile.py', '--envdir', envdir, '--force-venv-backend']
    start = time.perf_counter()
    result = subprocess.run(
        [*command, backend, *options, '-s', *SESSIONS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f'{backend} run failed:\n{result.stdout}\n{result.stderr}')
    return seconds, result.stderr.count('Started an embedded PostgreSQL server')


def main():
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ('uv', 'virtualenv'):
            envdir = os.path.join(tmp, backend)
            install, _ = run(backend, envdir, '--install-only')
            shutil.rmtree(envdir)
            cold, cold_starts = run(backend, envdir)
            warm, warm_starts = run(backend, envdir, '-r')
            rows[backend] = (install, cold, warm, f'{cold_starts}, {warm_starts}')
    print('| backend | install only, cold | cold | warm (-r) | servers started (cold, warm) |')
    print('| --- | ---: | ---: | ---: | --- |')
    for backend, (install, cold, warm, starts) in rows.items():
        print(f'| {backend} | {install:.1f} s | {cold:.1f} s | {warm:.1f} s | {starts} |')
    uv, pip = rows['uv'], rows['virtualenv']
    print(
        f'\nvirtualenv + pip takes {pip[0] / uv[0]:.1f}x as long as uv to install, '
        f'{pip[1] / uv[1]:.1f}x for a cold run, {pip[2] / uv[2]:.1f}x for a warm one.'
    )


if __name__ == '__main__':
    main()
