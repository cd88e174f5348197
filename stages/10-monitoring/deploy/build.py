"""Build a release of the committed code: python3 build.py (in deploy/)

Writes deploy/build/<UTC time>-<git sha>.tar.gz: the app's files at the last commit,
and in wheels/ every package of requirements.txt, for the server's Python and machine.
Each wheel must have a hash that deploy/requirements-server.txt lists, here and again
on the server, which installs from those wheels alone: it needs no access to PyPI,
and gets exactly the files the tests ran with. Prints the release's name.
"""

import argparse
import subprocess
import sys
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path

APP = Path(__file__).resolve().parent.parent  # the folder with wsgi.py
BUILD = APP / 'deploy' / 'build'


def git(*args):
    return subprocess.run(
        ['git', *args], cwd=APP, check=True, capture_output=True, text=True
    ).stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Debian 13's Python on a 64-bit PC; Ubuntu 24.04 has 3.12, an ARM server aarch64.
    parser.add_argument('--python-version', default='3.13')
    parser.add_argument('--platform', default='manylinux2014_x86_64')
    args = parser.parse_args()

    if git('status', '--porcelain', '--', '.'):
        sys.exit('build.py: commit or stash your changes first; a release is a commit')
    name = f'{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{git("rev-parse", "--short", "HEAD").strip()}'
    BUILD.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        # HEAD:./ is the app's folder at the last commit, at the repository's top or not.
        git('archive', '--output', f'{folder}/code.tar', 'HEAD:./')
        with tarfile.open(f'{folder}/code.tar') as code:
            code.extractall(f'{folder}/release', filter='data')
        subprocess.run(
            [sys.executable, '-m', 'pip', 'download', '--quiet', '--require-hashes']
            + ['-r', APP / 'deploy' / 'requirements-server.txt']
            + ['--dest', f'{folder}/release/wheels', '--only-binary', ':all:']
            + ['--python-version', args.python_version, '--platform', args.platform],
            check=True,
        )
        with tarfile.open(BUILD / f'{name}.tar.gz.tmp', 'w:gz') as release:
            release.add(f'{folder}/release', arcname='.')
    (BUILD / f'{name}.tar.gz.tmp').rename(BUILD / f'{name}.tar.gz')
    print(name)


if __name__ == '__main__':
    main()
