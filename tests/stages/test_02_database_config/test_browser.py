"""Each stage's page in a real Chromium, driven by Playwright; screenshots for the docs.

Chromium comes from the system (Debian's ``chromium`` package), never from
``playwright install``. Where it is missing the tests skip, saying how to install it;
CI sets APP_DEPLOY_NO_SKIP, which turns such a skip into a failure.

One Chromium serves every stage of a nox run: the first test to need it starts it
in the run's folder (tools/noxrun.py), the others connect to it over the DevTools
protocol, and the run stops it, by PID, when it ends.
"""

import pytest

from tests.helpers.reader import APP, FORM_STAGES, NAMES, stored_names


@pytest.mark.stages(*FORM_STAGES)
@pytest.mark.covers(*APP)
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
