"""Let ``python3 noxfile.py`` work on a machine with nothing but Python.

When the running Python cannot import nox, make a virtual environment in
``.nox/_bootstrap`` with the dependencies listed in the noxfile's script block
(PEP 723), then run the noxfile again with that environment's Python.
Standard library only: this runs before anything is installed.

uv installs in a few seconds what pip takes half a minute for: where ``uv`` is on
PATH it makes the environment and fills it; elsewhere pip installs uv alone (one
wheel, the version the noxfile pins) and uv the rest.
"""

import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path


def script_dependencies(path):
    """The ``dependencies`` of the ``# /// script`` block at the top of ``path``."""
    text = Path(path).read_text()
    block = re.search(r'^# /// script\n(.*?)^# ///$', text, re.MULTILINE | re.DOTALL)[1]
    toml = ''.join(line[2:] + '\n' for line in block.splitlines())
    return tomllib.loads(toml)['dependencies']


def run_with_nox(noxfile):
    """Run ``noxfile`` again in an environment that has its dependencies; never return."""
    noxfile = Path(noxfile).resolve()
    home = noxfile.parent / '.nox' / '_bootstrap'
    python = home / ('Scripts' if os.name == 'nt' else 'bin') / 'python'
    wanted = '\n'.join(script_dependencies(noxfile))
    installed = home / 'installed.txt'
    if not installed.exists() or installed.read_text() != wanted:
        print(f'Installing nox and what the noxfile needs into {home} ...', flush=True)
        install(home, python, wanted.split('\n'))
        installed.write_text(wanted)
    os.execv(python, [python, noxfile, *sys.argv[1:]])


def install(home, python, requirements):
    """Make the environment ``home`` anew and install ``requirements`` into it, with uv."""
    uv = shutil.which('uv')
    if uv:
        subprocess.run(
            [uv, 'venv', '--quiet', '--clear', '--python', sys.executable, home], check=True
        )
    else:
        venv.create(home, with_pip=True, clear=True)
        pins = [spec for spec in requirements if spec.startswith('uv==')]
        pip = [python, '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check']
        subprocess.run([*pip, *pins], check=True)
        uv = python.parent / 'uv'
    subprocess.run(
        [uv, 'pip', 'install', '--quiet', '--python', python, *requirements], check=True
    )
