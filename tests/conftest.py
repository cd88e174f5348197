"""Fixtures of the repository tests. Run them through nox: ``nox -s stage02``.

Run by hand, ``pytest tests --stage 02`` uses the current Python's environment for
the stage, and the server that ``tools.postgres`` picks.
"""

import os
import secrets
import sys
from pathlib import Path

import pytest

# Before they are imported: a failing assert in a helper shows its values, as in a test.
pytest.register_assert_rewrite('tests.helpers')

from tests.helpers.browser import CHROMIUM, VIEWPORT, run_chromium  # noqa: E402
from tests.helpers.machine import skip_without  # noqa: E402
from tests.helpers.reader import Reader, new_database  # noqa: E402
from tools import loopback, noxrun, postgres  # noqa: E402
from tools.stagediff import same_in  # noqa: E402
from tools.stages import STAGES  # noqa: E402

# SIGTERM and SIGHUP (nox stopped, a terminal closed) stop the tests as Ctrl-C does:
# the servers they started are stopped and their databases dropped.
noxrun.stop_on_signals()


def pytest_addoption(parser):
    parser.addoption(
        '--stage',
        choices=[*sorted(STAGES), 'repo'],
        required=True,
        help="the stage to test, or 'repo' for the docs and the tooling",
    )
    parser.addoption(
        '--also-identical',
        action='store_true',
        help='also run the tests whose files this stage carries unchanged from the last one',
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # Every run's summary says why a test skipped (as -rs does).
    if not {'s', 'a', 'A'} & set(config.option.reportchars):
        config.option.reportchars += 's'
    config.addinivalue_line('markers', "stages(*numbers): the stages (or 'repo') a test is for")
    config.addinivalue_line('markers', STANDIN_MARKER)
    config.addinivalue_line(
        'markers',
        "covers(*paths): the stage's files, folders or 'README.md#Section's a test depends "
        "on; a stage whose paths are the previous stage's, byte for byte, deselects it",
    )


STANDIN_MARKER = 'standin: runs on stand-in servers or in containers, with their own PostgreSQL'
# The fixtures that give a test those: the stand-in servers of stages 06, 07 and 09, and
# Podman for stage 08's images.
STANDIN_FIXTURES = {'servers', 'provisioned_servers', 'standins', 'engine'}


def pytest_itemcollected(item):
    """Mark ``standin`` the tests that bring their own PostgreSQL, so that a run against
    another server can leave them out: ``-m 'not standin'``."""
    if STANDIN_FIXTURES & set(getattr(item, 'fixturenames', ())):
        item.add_marker('standin')


def pytest_collection_modifyitems(config, items):
    """Keep the tests marked for the stage under test; deselect (not skip) the others,
    and those whose files the stage carries from the stage before, where they ran."""
    stage = config.getoption('--stage')
    kept, dropped, carried = [], [], {}
    for item in items:
        marker = item.get_closest_marker('stages')
        if not marker or stage not in marker.args:
            dropped.append(item)
        elif (earlier := ran_on_the_same_files(config, item, stage, marker.args)) is None:
            kept.append(item)
        else:
            dropped.append(item)
            carried.setdefault(earlier, []).append(item.nodeid)
    config.stash[CARRIED] = carried
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


CARRIED = pytest.StashKey[dict]()  # an earlier stage: the ids of the tests left to it


def ran_on_the_same_files(config, item, stage, stages):
    """The stage before ``stage`` (of ``stages``) whose files the test covers are the
    same as this one's, byte for byte; None when they differ or the test says nothing."""
    covers = item.get_closest_marker('covers')
    earlier = [number for number in stages if number < stage]
    if not covers or not earlier or config.getoption('--also-identical'):
        return None
    previous = max(earlier)
    return previous if same_in(STAGES[previous], STAGES[stage], covers.args) else None


def pytest_report_collectionfinish(config):
    """Say which tests were left out because an earlier stage ran them on the same files."""
    return [
        f"deselected {len(ids)} tests: the files they cover are stage {earlier}'s, byte for "
        f'byte, and the stage{earlier} session runs them (--also-identical: here too)'
        for earlier, ids in sorted(config.stash.get(CARRIED, {}).items())
    ]


@pytest.fixture(scope='session')
def stage(pytestconfig):
    return pytestconfig.getoption('--stage')


@pytest.fixture(scope='session')
def stage_dir(stage):
    return STAGES[stage]


@pytest.fixture(scope='session')
def stage_bin():
    """The bin directory of the environment made from the stage's requirements.txt."""
    return Path(os.environ.get('APP_DEPLOY_STAGE_BIN', Path(sys.executable).parent))


@pytest.fixture(scope='session')
def server():
    try:
        return postgres.server_url()
    except postgres.ServerError as error:
        pytest.exit(str(error), returncode=1)


@pytest.fixture
def database(server):
    """The URL of a new, empty database, dropped when the test ends."""
    with new_database(server) as url:
        yield url


@pytest.fixture(scope='module')
def module_database(server):
    """The URL of a new, empty database shared by a module's tests, dropped after them."""
    with new_database(server) as url:
        yield url


@pytest.fixture
def reader(stage_dir, stage_bin, tmp_path):
    return Reader(stage_dir, tmp_path, stage_bin)


@pytest.fixture
def production_env(reader, database):
    """The stage copy set up as on a server (stage 05 on): production settings, tables
    migrated. For tools/loopback.py, which serves it behind nginx."""
    skip_without(loopback.nginx_binary, loopback.NginxMissing)
    reader.env.update(
        FLASK_APP='wsgi.py',
        FLASK_CONFIG='production',
        PRODUCTION_DATABASE_URL=database,
        SECRET_KEY=secrets.token_hex(32),
        TRUSTED_HOSTS='127.0.0.1',
    )
    reader.run('flask db upgrade', preload=True)
    return reader


SKIPPED = []


def pytest_runtest_logreport(report):
    if report.skipped:
        SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    """With APP_DEPLOY_NO_SKIP set (CI sets it), a skipped test fails the run."""
    if SKIPPED and os.environ.get('APP_DEPLOY_NO_SKIP'):
        print(f'\nAPP_DEPLOY_NO_SKIP is set, and these tests skipped: {", ".join(SKIPPED)}')
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# The page in a browser: for the stages (01 on) and the docs site.


@pytest.fixture(scope='module')
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(
            f'no Chromium at {CHROMIUM}: install it (Debian/Ubuntu: sudo apt-get install '
            'chromium) or set APP_DEPLOY_CHROMIUM to its path'
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.connect_over_cdp(run_chromium())
        yield browser
        browser.close()  # our connection; the run stops Chromium


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=2)
    page = context.new_page()
    page.set_default_timeout(5000)
    yield page
    context.close()


@pytest.fixture
def screenshot(stage, tmp_path):
    """Save a screenshot of a page (or of a locator: a part of one) as ``stageNN.png``,
    or ``stageNN-NAME.png`` for one of several: into APP_DEPLOY_SCREENSHOTS if set."""
    folder = Path(os.environ.get('APP_DEPLOY_SCREENSHOTS') or tmp_path)

    def save(shown, name=None):
        path = folder / f'stage{stage}{f"-{name}" if name else ""}.png'
        shown.screenshot(path=path)
        assert path.stat().st_size > 1000  # a picture, not an empty file
        return path

    return save
