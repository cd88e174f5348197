"""Each stage's page in a real Chromium, driven by Playwright; screenshots for the docs.

Chromium comes from the system (Debian's ``chromium`` package), never from
``playwright install``. Where it is missing the tests skip, saying how to install it;
CI sets APP_DEPLOY_NO_SKIP, which turns such a skip into a failure.

One Chromium serves every stage of a nox run: the first test to need it starts it
in the run's folder (tools/run.py), the others connect to it over the DevTools
protocol, and the run stops it, by PID, when it ends.
"""

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.reader import FORM_STAGES, NAMES, stored_names
from tools import run

CHROMIUM = os.environ.get('APP_DEPLOY_CHROMIUM') or shutil.which('chromium') or '/usr/bin/chromium'
# Flags a headless Chromium needs as root, and to keep it off the network but for the app.
FLAGS = [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--headless',
    '--remote-debugging-address=127.0.0.1',
    '--remote-debugging-port=0',  # any free port; Chromium writes it into DevToolsActivePort
]
# The screenshots are framed in the docs at about 720 px wide: a small window, drawn
# at twice the pixels, reads well there and sharp on any screen.
VIEWPORT = {'width': 720, 'height': 360}


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


def run_chromium():
    """The DevTools URL of the run's Chromium, started here if it is not running yet."""
    folder = run.folder()
    profile, pidfile = folder / 'chromium', folder / 'chromium.pid'
    with open(folder / 'chromium.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starts it; the others wait, then connect
        if not (pidfile.exists() and run.alive(int(pidfile.read_text()))):
            (profile / 'DevToolsActivePort').unlink(missing_ok=True)
            chromium = subprocess.Popen(
                [CHROMIUM, *FLAGS, f'--user-data-dir={profile}', 'about:blank'],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # it outlives these tests, to serve the next stage
                # Its singleton socket goes to the temporary folder: the run's, deleted
                # with it, not /tmp, where every run would leave one.
                env={**os.environ, 'TMPDIR': str(folder)},
            )
            pidfile.write_text(str(chromium.pid))
        port = profile / 'DevToolsActivePort'
        for _ in range(300):
            if port.exists() and port.read_text().strip():
                return f'http://127.0.0.1:{port.read_text().split()[0]}'
            time.sleep(0.05)
    raise AssertionError(f'{CHROMIUM} did not start')


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=2)
    page = context.new_page()
    page.set_default_timeout(5000)
    yield page
    context.close()


@pytest.fixture
def screenshot(stage, tmp_path):
    """Save a screenshot as ``stageNN.png``: into APP_DEPLOY_SCREENSHOTS if set."""
    folder = Path(os.environ.get('APP_DEPLOY_SCREENSHOTS') or tmp_path)

    def save(page):
        path = folder / f'stage{stage}.png'
        page.screenshot(path=path)
        assert path.stat().st_size > 1000  # a picture, not an empty file
        return path

    return save


@pytest.mark.stages('01')
def test_hello_world_in_a_browser(reader, page, screenshot):
    reader.env['FLASK_APP'] = 'app.py'
    with reader.serve() as site:
        page.goto(site.url)
        assert page.inner_text('body') == 'Hello World!'
        screenshot(page)


@pytest.mark.stages(*FORM_STAGES)
def test_form_in_a_browser(reader, database, page, screenshot, stage):
    """Stage 02 only stores the names; from stage 03 on, the page lists them too."""
    from playwright.sync_api import expect

    reader.develop_on(database)
    lists_names = stage != '02'
    listed = page.get_by_role('listitem')
    with reader.serve() as site:
        page.goto(site.url)
        expect(page.get_by_role('heading', name='Hello World!')).to_be_visible()
        for name in NAMES:
            page.get_by_label('Enter a name').fill(name)
            if not lists_names and name == NAMES[-1]:
                screenshot(page)  # the form, a name typed in
            page.get_by_role('button', name='Submit').click()
            expect(page.get_by_label('Enter a name')).to_have_value('')  # back on a new form
            if lists_names:  # oldest first in stage 03, newest first from 04 on
                expect(listed.filter(has_text=name)).to_have_count(1)
        assert stored_names(database) == NAMES
        if lists_names:
            expect(listed).to_have_count(len(NAMES))
            screenshot(page)  # the page listing the names

        # Blanks pass the browser's own check for an empty field, and the app's refuses them.
        page.get_by_label('Enter a name').fill('   ')
        page.get_by_role('button', name='Submit').click()
        expect(page.get_by_text('Please enter a name.')).to_be_visible()
        assert stored_names(database) == NAMES
