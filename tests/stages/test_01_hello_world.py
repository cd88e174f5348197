"""Stage 01 as a reader runs it."""

import shlex

import pytest

from tests.helpers.markdown import readme_commands
from tools.stages import STAGES

pytestmark = pytest.mark.stages('01')


def test_flask_run(reader):
    commands = readme_commands(reader.dir)
    assert 'export FLASK_APP=app.py' in commands
    assert 'flask run' in commands
    reader.export('export FLASK_APP=app.py')
    with reader.serve('flask run') as site:
        response = site.get()
    assert response.status_code == 200
    assert response.text == 'Hello World!'


# Starts `python app.py` and fetches its page at port 5000; run in a network namespace.
FETCH = """
import subprocess, time, urllib.request
server = subprocess.Popen(['python', 'app.py'])
try:
    for _ in range(300):
        try:
            print(urllib.request.urlopen('http://127.0.0.1:5000/', timeout=1).read().decode())
            break
        except OSError:
            time.sleep(0.1)
finally:
    server.terminate()
    server.wait()
"""


def test_python_app_py(reader):
    """``python app.py`` serves on Flask's default port, 5000, as the README says.

    In a network namespace of its own (with its own loopback), so that whatever
    holds port 5000 on this machine does not matter.
    """
    assert 'python app.py' in readme_commands(reader.dir)
    if reader.run('unshare -rn true', check=False).returncode != 0:
        pytest.skip('needs unshare -rn (util-linux) and user namespaces, to use port 5000 alone')
    script = f'ip link set lo up && python -c {shlex.quote(FETCH)}'
    result = reader.run(f'unshare -rn sh -c {shlex.quote(script)}')
    assert result.stdout.splitlines()[-1] == 'Hello World!'  # after the server's banner


INSTALL = ['python3 -m venv .venv', '. .venv/bin/activate', 'pip install -r requirements.txt']


def test_install_commands_make_a_working_environment(reader):
    """The README's install lines, typed into bash as they stand; the later stages share them."""
    for stage_dir in STAGES.values():
        commands = readme_commands(stage_dir)
        start = commands.index(INSTALL[0])
        assert commands[start : start + len(INSTALL)] == INSTALL, stage_dir.name
    script = ' && '.join([*INSTALL, 'flask --app app.py routes'])
    result = reader.run(f'bash -c {shlex.quote(script)}', timeout=300)
    assert (reader.dir / '.venv' / 'bin' / 'flask').exists()
    assert 'hello_world' in result.stdout


def test_hello_world_in_a_browser(reader, page, screenshot):
    reader.env['FLASK_APP'] = 'app.py'
    with reader.serve() as site:
        page.goto(site.url)
        assert page.inner_text('body') == 'Hello World!'
        screenshot(page)
