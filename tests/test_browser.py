"""Each stage's page in a real Chromium, driven by Playwright; screenshots for the docs.

Chromium comes from the system (Debian's ``chromium`` package), never from
``playwright install``. Where it is missing the tests skip, saying how to install it;
CI sets APP_DEPLOY_NO_SKIP, which turns such a skip into a failure.
"""

import os
import shutil
from pathlib import Path

import pytest

from tests.reader import FORM_STAGES, NAMES, stored_names

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
]
# The screenshots are framed in the docs at about 720 px wide: a small window, drawn
# at twice the pixels, reads well there and sharp on any screen.
VIEWPORT = {'width': 720, 'height': 450}


@pytest.fixture(scope='module')
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(
            f'no Chromium at {CHROMIUM}: install it (Debian/Ubuntu: sudo apt-get install '
            'chromium) or set APP_DEPLOY_CHROMIUM to its path'
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport=VIEWPORT, device_scale_factor=2)
    page.set_default_timeout(5000)
    yield page
    page.close()


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
            if lists_names:
                expect(listed.last).to_have_text(name)
        assert stored_names(database) == NAMES
        if lists_names:
            expect(listed).to_have_text(NAMES)
            screenshot(page)  # the page listing the names

        # Blanks pass the browser's own check for an empty field, and the app's refuses them.
        page.get_by_label('Enter a name').fill('   ')
        page.get_by_role('button', name='Submit').click()
        expect(page.get_by_text('Please enter a name.')).to_be_visible()
        assert stored_names(database) == NAMES
