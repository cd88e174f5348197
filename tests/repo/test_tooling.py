"""The tooling as a reader meets it: nox sessions, stopping them, the server they pick.

Also the commands the docs give outside the stage READMEs (nox sessions, an SSH key).
Each nox run here is a run of its own, in an environment folder of this module's.
"""

import fcntl
import os
import pty
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil
import pytest
import requests

from tests.helpers.machine import skip_without
from tests.helpers.reader import database_prefix, wait_for
from tools import loopback, noxrun, postgres
from tools.processes import alive, free_port, start_piped
from tools.stagediff import same_in, section, stage_diff
from tools.stages import ROOT, STAGES, title

pytestmark = pytest.mark.stages('repo')

# What a nested run must not inherit from ours: it is a run of its own.
OURS = (
    noxrun.RUN_VARIABLE,
    'APP_DEPLOY_NOX_COMMAND',
    'APP_DEPLOY_DATABASE_PREFIX',
    'FLASK_RUN_PORT',
)


@pytest.fixture(scope='module')
def envdir(tmp_path_factory):
    """The environment folder of the nested nox runs, shared by this module's tests."""
    return tmp_path_factory.mktemp('envdir')


def command(line, envdir):
    """``line`` as the docs give it, run with this Python for ``python3``, in ``envdir``.

    Never in the .nox/ of the run these tests are part of: that run holds it, and a
    nested run would wait for it to end (tools/noxrun.py).
    """
    args = shlex.split(line)
    if args[0] == 'python3':
        args = [sys.executable, *args[1:]]
    elif args[0] == 'nox':
        args = [str(Path(sys.executable).parent / 'nox'), *args[1:]]
    args[args.index('noxfile.py') + 1 if 'noxfile.py' in args else 1 : 0] = [
        '--envdir',
        str(envdir),
    ]
    return args


def nox_env(**variables):
    """The environment of a nested nox run: ours, less what makes it part of ours."""
    env = {k: v for k, v in os.environ.items() if k not in OURS}
    env.pop('APP_DEPLOY_POSTGRES_URL', None)
    env.pop('DEV_DATABASE_URL', None)
    return {**env, **variables}


def run_nox(line, envdir, timeout=300, **variables):
    """Run the nox command ``line`` nested, to its end; return the CompletedProcess."""
    env = nox_env(**variables)
    return subprocess.run(
        command(line, envdir), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


STARTED = []  # the nested runs started, stopped after each test if still running


def start(args, env):
    """Start a nested nox run in a process group of its own; its output in a pipe."""
    process = start_piped(args, cwd=ROOT, env=env)
    STARTED.append(process)
    return process


@pytest.fixture(autouse=True)
def stop_nested_runs():
    """Stop, by process group, any nested run a failing test left running."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.communicate(timeout=60)


def as_role(url, role):
    """``url`` with ``role`` as its user (and no password)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f'{role}@{parts.netloc.rpartition("@")[2]}'))


def test_diff_session_prints_the_diff_between_two_stages(envdir):
    result = run_nox('python3 noxfile.py -s diff -- 01 02', envdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout == stage_diff(STAGES['01'], STAGES['02'])
    assert '--- 01-hello-world/app.py\n+++ /dev/null\n' in result.stdout
    assert '+++ 02-database-config/wsgi.py\n' in result.stdout


def test_readme_diff_command_shows_added_files():
    """The README's diff command, run as it stands, lists the files a stage adds."""
    text = (ROOT / 'README.md').read_text()
    (line,) = re.findall(r'`(diff -\w+ stages/01-hello-world stages/02-database-config)`', text)
    result = subprocess.run(shlex.split(line), cwd=ROOT, capture_output=True, text=True)
    assert '+++ stages/02-database-config/wsgi.py' in result.stdout


def test_session_menu_is_plain_and_lists_every_stage(envdir):
    result = run_nox('python3 noxfile.py -l', envdir)
    assert result.returncode == 0, result.stderr
    assert '``' not in result.stdout and 'listed above' not in result.stdout
    for number, directory in STAGES.items():
        line = f'* stage{number} [stages] -> Test s{title(directory)[1:]}, as a reader runs it.'
        assert line in result.stdout.splitlines()  # selected by default, tagged, described


def test_every_session_the_pages_name_is_in_the_menu(envdir):
    """A `nox -s NAME` or `noxfile.py -s NAME` in a README or a docs page names a session
    that exists (stage READMEs once named one by its old name)."""
    menu = run_nox('python3 noxfile.py -l', envdir).stdout
    sessions = set(re.findall(r'^[*-] (\S+)', menu, re.MULTILINE))
    pages = [ROOT / 'README.md', *ROOT.glob('docs/*.md'), *ROOT.glob('stages/*/README.md')]
    named = {
        (page.relative_to(ROOT).as_posix(), name)
        for page in pages
        for name in re.findall(r'(?:\bnox|noxfile\.py) -s ([\w-]+)', page.read_text())
    }
    assert named and {(page, name) for page, name in named if name not in sessions} == set()


@pytest.mark.parametrize('line', ['python3 noxfile.py', 'nox'])
def test_hints_name_the_command_the_reader_used(line, envdir):
    result = run_nox(f'{line} -s diff -- 01', envdir)
    assert result.returncode != 0
    hints = [text for text in result.stderr.splitlines() if 'name two stages' in text]
    assert len(hints) == 1, result.stderr  # said once
    assert f'name two stages: {line} -s diff -- 01 02 ' in hints[0]


def test_skip_reasons_are_in_every_summary(tmp_path):
    """A skipped test says why at the end of the run, without -rs."""
    env = nox_env(APP_DEPLOY_CHROMIUM=str(tmp_path / 'no-chromium'))
    env.pop('APP_DEPLOY_NO_SKIP', None)
    args = [
        sys.executable,
        '-m',
        'pytest',
        'tests',
        '--stage',
        '01',
        '-k',
        'browser',
        '-p',
        'no:cacheprovider',
    ]
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert re.search(r'^SKIPPED \[1\] .*no Chromium at .*no-chromium', result.stdout, re.M)


def collected(stage, *options):
    """The ids of the tests a run of ``stage`` keeps, and what it says of the rest."""
    args = [sys.executable, '-m', 'pytest', 'tests', '--stage', stage, '--collect-only', '-q']
    args += ['-p', 'no:cacheprovider', *options]
    result = subprocess.run(args, cwd=ROOT, env=nox_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    ids = {line for line in result.stdout.splitlines() if '::' in line}
    return ids, result.stdout


def test_a_test_of_files_a_stage_carries_unchanged_runs_under_the_first_stage_alone():
    """Stage 07's app and nginx site are stage 06's byte for byte: the site's tests run
    in stage 06 and are deselected in stage 07, which says so; stage 08 changed
    config.py, so they run there again."""
    site = 'tests/stages/test_05_production/test_nginx_site.py::'
    in_06, _ = collected('06')
    in_07, said = collected('07')
    in_08, _ = collected('08')
    assert any(test.startswith(site) for test in in_06)
    assert not any(test.startswith(site) for test in in_07)
    assert re.search(r"deselected \d+ tests: the files they cover are stage 06's", said)
    assert {test for test in in_08 if test.startswith(site)} == {
        test for test in in_06 if test.startswith(site)
    }
    again, _ = collected('07', '--also-identical')
    assert again > in_07 and {test for test in again if test.startswith(site)}


def test_what_a_test_covers_is_compared_file_by_file_and_section_by_section(tmp_path):
    old, new = tmp_path / 'old', tmp_path / 'new'
    for stage in (old, new):
        (stage / 'app').mkdir(parents=True)
        (stage / 'app' / 'views.py').write_text('views\n')
        (stage / 'README.md').write_text('# Stage\n\n## Run it\n\nflask run\n\n## Deploy\n')
    (new / 'README.md').write_text('# Stage 2\n\n## Run it\n\nflask run\n\n## Deploy\nnew\n')
    assert same_in(old, new, ['app', 'README.md#Run it', 'missing.txt'])
    assert not same_in(old, new, ['README.md#Deploy'])
    assert not same_in(old, new, ['README.md'])
    (new / 'app' / 'models.py').write_text('models\n')
    assert not same_in(old, new, ['app'])
    assert section('## Run it\n\nflask run\n\n## Deploy\n', 'Run it') == '\nflask run\n\n'
    with pytest.raises(ValueError, match='no "## Settings" section'):
        section('## Run it\n', 'Settings')


def test_masked_urls_hide_the_password_and_nothing_else():
    assert postgres.masked('postgresql://u:s3cret@h:5432/db') == 'postgresql://u:***@h:5432/db'
    assert postgres.masked('postgresql://u@h/db') == 'postgresql://u@h/db'
    assert postgres.masked('postgresql://postgres:@/postgres?host=/tmp/x') == (
        'postgresql://postgres@/postgres?host=/tmp/x'
    )


def test_database_names_are_checked_and_quoted(server, database):
    """A name that is not ours is refused before any SQL; ours are quoted identifiers."""
    decoy = postgres.unique_name(database_prefix())
    postgres.create_database(server, decoy)
    try:
        for name in ['x" --', f'{decoy}" --', f'x"; DROP DATABASE "{decoy}', 'A', 'a' * 64, '']:
            with pytest.raises(ValueError):
                postgres.drop_database(server, name)
            with pytest.raises(ValueError):
                postgres.create_database(server, name)
        assert postgres.databases(server, decoy) == [decoy]
    finally:
        postgres.drop_database(server, decoy)
    assert postgres.databases(server, decoy) == []


# Files that still name a database of their own, until they use tests.helpers.reader.
def test_every_database_of_the_tests_has_the_run_prefix():
    """Only tests/reader.py names the databases the tests make (with the run's prefix)."""
    for path in (ROOT / 'tests').glob('*.py'):
        if path.name not in {'reader.py', 'test_tooling.py'}:
            text = path.read_text()
            assert 'create_database(' not in text, path.name
            assert "unique_name('" not in text, path.name
    assert database_prefix().startswith('app_deploy_nox_')


def serve_until_ctrl_c(args, env, port):
    """Run the serve session until its page answers; Ctrl-C; return the page, output."""
    server = start(args, env)
    try:
        page = wait_for(f'http://127.0.0.1:{port}/', server, seconds=120)
    finally:
        os.killpg(server.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        output = server.communicate(timeout=60)[0]
    return page, output, server.pid


def test_serve_session_runs_the_app_until_ctrl_c(database, envdir):
    port = free_port()
    args = [*command('python3 noxfile.py -s serve -- 03', envdir), '--port', str(port)]
    page, output, _ = serve_until_ctrl_c(args, nox_env(DEV_DATABASE_URL=database), port)
    assert page is not None and 'Hello World!' in page.text, output
    assert f'Using DEV_DATABASE_URL: {postgres.masked(database)}' in output
    assert 'Created the tables: names.' in output
    assert f'Open http://127.0.0.1:{port}/' in output  # the port it was given


SERVING_05 = re.compile(
    r'self-signed certificate: (https://\S+)/ \(plain HTTP, (http://\S+)/, sends browsers there\)'
)


@pytest.mark.filterwarnings('ignore::urllib3.exceptions.InsecureRequestWarning')  # self-signed
def test_serve_05_gives_the_https_address_and_the_http_one_that_sends_there(database, envdir):
    """gunicorn behind nginx on loopback: both addresses said, and plain HTTP redirects."""
    skip_without(loopback.nginx_binary, loopback.NginxMissing)
    server = start(
        command('python3 noxfile.py -s serve -- 05', envdir), nox_env(DEV_DATABASE_URL=database)
    )
    output, deadline = '', time.monotonic() + 300
    try:
        # Both lines said (a Ctrl-C between them would cut the second). Read from the
        # pipe itself: a buffered readline would hold the second line where select
        # cannot see it.
        while 'Ctrl-C stops both.' not in output and server.poll() is None:
            assert time.monotonic() < deadline, output
            if select.select([server.stdout], [], [], 1)[0]:
                output += os.read(server.stdout.fileno(), 65536).decode()
        assert SERVING_05.search(output), output
        https_url, http_url = SERVING_05.search(output).groups()
        http = requests.get(f'{http_url}/', allow_redirects=False, timeout=30)
        assert (http.status_code, http.headers['Location']) == (308, f'{https_url}/')
        page = requests.get(f'{https_url}/', verify=False, timeout=30)  # self-signed
        assert page.status_code == 200 and 'Hello World!' in page.text
    finally:
        os.killpg(server.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        output += server.communicate(timeout=60)[0]
    assert f'Open {https_url}/ in your browser; Ctrl-C stops both.' in output


def test_serve_uses_the_server_the_tests_use_and_says_so(server, envdir):
    port = free_port()
    env = nox_env(APP_DEPLOY_POSTGRES_URL=server, FLASK_RUN_PORT=str(port))
    args = command('python3 noxfile.py -s serve -- 03', envdir)
    page, output, pid = serve_until_ctrl_c(args, env, port)
    assert page is not None and 'Hello World!' in page.text, output
    assert f'Using PostgreSQL from APP_DEPLOY_POSTGRES_URL: {postgres.masked(server)}' in output
    assert ':@' not in output
    assert re.search(rf'In a new database, app_deploy_nox_{pid}_serve_\w+, dropped', output)
    assert f'Open http://127.0.0.1:{port}/' in output
    assert postgres.databases(server, f'app_deploy_nox_{pid}_') == []  # dropped at the end


def test_serve_says_in_one_line_that_the_port_is_taken(envdir):
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_nox('python3 noxfile.py -s serve -- 03', envdir, FLASK_RUN_PORT=str(port))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if str(port) in line]
    assert len(lines) == 1, result.stderr
    assert f'port {port} is in use' in lines[0]
    assert f'python3 noxfile.py -s serve -- 03 --port {port + 1}' in lines[0]
    assert 'Traceback' not in result.stderr


@pytest.fixture
def role(server):
    """A role that may log in and do nothing else, dropped after."""
    name = postgres.unique_name(database_prefix())
    postgres.create_role(server, name)
    yield name
    postgres.drop_role(server, name)


@pytest.mark.parametrize('line', ['python3 noxfile.py -s stage02', 'python3 noxfile.py'])
def test_a_role_that_may_not_create_databases_stops_the_run_in_one_line(
    server, role, envdir, line
):
    """One session, or the whole run with its sessions side by side: one line, at once."""
    result = run_nox(line, envdir, APP_DEPLOY_POSTGRES_URL=as_role(server, role))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if 'CREATEDB' in line]
    assert len(lines) == 1, output
    assert f'the role {role} may not create databases' in lines[0]
    assert 'Traceback' not in output and 'collected' not in output  # stopped before pytest


def test_an_unreachable_server_is_said_once(envdir):
    url = f'postgresql://nobody@127.0.0.1:{free_port()}/none'  # nothing listens there
    result = run_nox('python3 noxfile.py -s stage01', envdir, APP_DEPLOY_POSTGRES_URL=url)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert output.count(f'cannot connect to {url}') == 1, output
    assert 'Traceback' not in output and 'collected' not in output


def test_serve_on_a_database_of_another_role_says_so_in_one_line(database, role, envdir):
    postgres.execute(database, 'REVOKE CREATE ON SCHEMA public FROM PUBLIC')  # as from 15 on
    result = run_nox(
        'python3 noxfile.py -s serve -- 03',
        envdir,
        DEV_DATABASE_URL=as_role(database, role),
        FLASK_RUN_PORT=str(free_port()),
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if 'may not create tables' in line]
    assert len(lines) == 1, result.stderr
    assert f'GRANT CREATE ON SCHEMA public TO "{role}"' in lines[0]
    assert 'Traceback' not in result.stderr


def test_a_second_run_waits_for_the_first_and_says_so(envdir):
    with open(envdir / '.app-deploy-run.lock', 'a+') as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a run in progress holds it
        held.truncate(0)
        held.write('4242')
        held.flush()
        second = subprocess.Popen(
            command('python3 noxfile.py -s diff -- 01 02', envdir),
            cwd=ROOT,
            env=nox_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert select.select([second.stderr], [], [], 60)[0], 'said nothing in 60 s'
        first_line = second.stderr.readline()
        assert 'Waiting for the other run (PID 4242)' in first_line
        assert '--envdir' in first_line  # how to run beside it instead
        time.sleep(0.5)
        assert second.poll() is None  # still waiting
    output, _ = second.communicate(timeout=120)
    assert second.returncode == 0
    assert output == stage_diff(STAGES['01'], STAGES['02'])


def commands(pid):
    """The command lines of the processes below ``pid``, the script's name shortened."""
    found = []
    for process in psutil.Process(pid).children(recursive=True):
        try:
            found.append([Path(part).name for part in process.cmdline()])
        except psutil.Error:  # ended, or a zombie, meanwhile
            pass
    return found


def run_until_flask_serves(envdir, env):
    """Start stage 02's guard tests in a nested run; return it once `flask run` serves.

    The first test then waits a minute (tests/hold.py), its server and databases up.
    """
    args = command('python3 noxfile.py -r -s stage02', envdir)
    nox = start([*args, '--', '-p', 'tests.helpers.hold', '-k', 'valid'], env)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and nox.poll() is None:
        if any(command[1:3] == ['flask', 'run'] for command in commands(nox.pid)):
            time.sleep(1)  # the server answers, and the test holds
            return nox, psutil.Process(nox.pid).children(recursive=True)
        time.sleep(0.2)
    raise AssertionError(f'flask run never started:\n{nox.communicate(timeout=60)[0]}')


STOPS = {
    'SIGTERM to nox': lambda pid: os.kill(pid, signal.SIGTERM),
    'SIGHUP to nox': lambda pid: os.kill(pid, signal.SIGHUP),
    'SIGTERM to its process group': lambda pid: os.killpg(pid, signal.SIGTERM),
}


@pytest.mark.parametrize('stop', STOPS.values(), ids=STOPS.keys())
def test_stopping_a_run_leaves_nothing_behind(server, envdir, stop):
    """No process, no database on the reader's server, no folder survives the run."""
    nox, processes = run_until_flask_serves(envdir, nox_env(APP_DEPLOY_POSTGRES_URL=server))
    assert postgres.databases(server, f'app_deploy_nox_{nox.pid}_'), processes  # its tests'
    stop(nox.pid)
    output = nox.communicate(timeout=120)[0]
    assert nox.returncode != 0, output
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert alive == [], output
    assert postgres.databases(server, f'app_deploy_nox_{nox.pid}_') == [], output
    assert not (Path(noxrun.folder().parent) / f'{noxrun.PREFIX}{nox.pid}').exists()


def test_a_killed_runs_embedded_server_is_stopped_by_the_next_run(envdir):
    """SIGKILL leaves the embedded PostgreSQL running; the next run stops and deletes it."""
    nox, _ = run_until_flask_serves(envdir, nox_env())
    folder = Path(noxrun.folder().parent) / f'{noxrun.PREFIX}{nox.pid}'
    postmaster = int((folder / 'pgdata' / 'postmaster.pid').read_text().split()[0])
    os.killpg(nox.pid, signal.SIGKILL)
    nox.communicate(timeout=60)
    assert alive(postmaster)  # nothing stopped it
    subprocess.run(
        command('python3 noxfile.py -s diff -- 01 02', envdir),
        cwd=ROOT,
        env=nox_env(),
        check=True,
        capture_output=True,
    )
    assert not folder.exists()
    assert not alive(postmaster)


def test_stage_session_runs_from_the_root(envdir):
    result = run_nox('python3 noxfile.py -s stage03 -- -k walkthrough', envdir, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Session stage03 was successful' in result.stderr


def answer_passphrases(line, passphrase, home):
    """Run ``line`` in bash on a terminal, typing ``passphrase`` at each prompt."""
    pid, terminal = pty.fork()
    if pid == 0:
        os.environ['HOME'] = str(home)
        os.execvp('bash', ['bash', '-c', line])
    output = b''
    while True:
        try:
            data = os.read(terminal, 1024)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        output += data
        if data.rstrip().endswith(b':') and b'passphrase' in data:
            os.write(terminal, passphrase.encode() + b'\n')
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode()


def test_ssh_key_pair_with_a_passphrase(tmp_path):
    code, output = answer_passphrases(
        'mkdir -p -m 700 ~/.ssh && ssh-keygen -t ed25519 -f ~/.ssh/app_deploy',
        'correct horse battery staple',
        tmp_path,
    )
    assert code == 0, output
    ssh = tmp_path / '.ssh'
    assert oct(ssh.stat().st_mode & 0o777) == '0o700'
    public = subprocess.run(
        ['bash', '-c', 'cat ~/.ssh/app_deploy.pub'],
        env={**os.environ, 'HOME': str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert public.startswith('ssh-ed25519 ')
    # The private key is encrypted: the passphrase opens it, nothing else does.
    derive = ['ssh-keygen', '-y', '-f', str(ssh / 'app_deploy'), '-P']
    assert subprocess.run([*derive, ''], capture_output=True).returncode != 0
    opened = subprocess.run(
        [*derive, 'correct horse battery staple'], capture_output=True, text=True
    )
    assert opened.stdout.split()[:2] == public.split()[:2]
