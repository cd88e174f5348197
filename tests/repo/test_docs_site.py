"""The built site, for every page in mkdocs.yml's nav: what a reader sees and copies.

The site is built here, with the mkdocs of the ``docs`` nox session (on PATH while its
tests run), into a folder of this module's own, so that another build of ``site/`` at
the same time cannot change it under the tests.
"""

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from html.parser import HTMLParser

import pytest

from tests.helpers.docs import CONFIG, DOCS, NAV, docs_hooks, page_url
from tools.stages import ROOT

pytestmark = pytest.mark.stages('repo')

SESSIONS = ('language-console', 'language-ps1con', 'language-pycon')
PROMPTS = ('$ ', 'PS> ', '>>> ', '... ')


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    mkdocs = shutil.which('mkdocs')
    if not mkdocs:
        pytest.skip('mkdocs is not installed: run these tests with nox -s docs')
    folder = tmp_path_factory.mktemp('site')
    subprocess.run(
        [mkdocs, 'build', '--strict', '--quiet', '--site-dir', str(folder)],
        cwd=ROOT,
        env={**os.environ, 'NO_MKDOCS_2_WARNING': '1'},
        check=True,
    )
    return folder


def built(site, page):
    """The HTML of a page of the nav, as built."""
    name = page.removesuffix('.md')
    return (site / ('index.html' if name == 'index' else f'{name}/index.html')).read_text()


class Elements(HTMLParser):
    """The start tags of a page, with their attributes, and the text inside each <p>."""

    def __init__(self, html):
        super().__init__()
        self.tags, self.paragraphs, self._in_p = [], [], False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == 'p':
            self._in_p = True
            self.paragraphs.append('')

    def handle_endtag(self, tag):
        if tag == 'p':
            self._in_p = False

    def handle_data(self, data):
        if self._in_p:
            self.paragraphs[-1] += data


def test_definition_lists_render_as_dl(site):
    lists = 0
    for page in NAV:
        source = (DOCS / page).read_text()
        terms = len(re.findall(r'^:   ', source, re.MULTILINE))
        elements = Elements(built(site, page))
        assert sum(tag == 'dd' for tag, _ in elements.tags) == terms, page
        for text in elements.paragraphs:
            assert not re.search(r'^:\s', text, re.MULTILINE), f'{page}: "{text[:60]}"'
        lists += terms
    assert lists >= 15


def test_diffs_are_collapsed_code_only_and_out_of_search(site):
    index = json.loads((site / 'search' / 'search_index.json').read_text())
    indexed = ' '.join(doc['text'] for doc in index['docs'])
    diffs = 0
    for page in NAV:
        html = built(site, page)
        assert 'No file changed' not in html, page
        marker = '<!-- stage-diff ' in (DOCS / page).read_text()
        details = re.findall(r'<details class="stage-diff"([^>]*)>(.*?)</details>', html, re.S)
        assert len(details) == int(marker), page
        for attributes, inside in details:
            assert attributes == ' data-search-exclude=""', f'{page}: open, or in search'
            titles = re.findall(r'<span class="filename">([^<]+)</span>', inside)
            assert titles and all(docs_hooks.is_code(title) for title in titles), titles
            diffs += 1
    assert diffs >= 2
    assert '@@ -' not in indexed and 'The code that changed from' not in indexed


def test_every_page_has_a_next_link(site):
    for number, page in enumerate(NAV):
        (paragraph,) = re.findall(r'<p class="next-part">(.*?)</p>', built(site, page), re.S)
        links = re.findall(r'href="([^"]+)"', paragraph)
        if number + 1 < len(NAV):
            following = NAV[number + 1].removesuffix('.md')
            assert links == [f'../{following}/' if page != 'index.md' else f'{following}/'], page
        else:
            assert paragraph.startswith('<strong>Next:</strong>'), page


def test_screenshots_are_framed(site):
    images = 0
    for page in NAV:
        for tag, attributes in Elements(built(site, page)).tags:
            if tag == 'img' and {'screenshot', 'diagram'} & set(
                attributes.get('class', '').split()
            ):
                images += 1
            elif tag == 'img':
                raise AssertionError(f'{page}: an image without its frame: {attributes}')
    assert images == sum((DOCS / page).read_text().count('![') for page in NAV) >= 3
    css = (DOCS / 'stylesheets' / 'extra.css').read_text()
    assert re.search(r'img\.screenshot \{[^}]*border:', css)


def test_the_clone_command_names_repo_url(site):
    assert f'git clone {CONFIG["repo_url"]}' in re.sub(r'<[^>]+>', '', built(site, NAV[1]))


@pytest.fixture(scope='module')
def served(site):
    """The site over HTTP on a free loopback port, for the browser."""
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()
    thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# The session blocks of the page that are visible now and not yet copied, marked as
# pending: for each, the commands it shows (the lines after a prompt) and its output.
VISIBLE_SESSIONS = """
selectors => [...document.querySelectorAll(selectors)]
  .filter(block => block.offsetParent !== null && !block.dataset.copied)
  .map((block, i) => {
    block.dataset.copied = 'pending';
    const lines = block.querySelector('code').textContent.split('\\n');
    const commands = lines.filter(line => /^(\\$ |PS> |>>> |\\.\\.\\. )/.test(line))
                          .map(line => line.replace(/^(\\$ |PS> |>>> |\\.\\.\\. )/, ''));
    const outputs = [...block.querySelectorAll('.go')].map(span => span.textContent.trim());
    return {commands: commands, outputs: outputs.filter(text => text)};
  })
"""


def test_the_copy_button_copies_the_commands_alone(site, served, browser):
    """Click every session block's copy button, in every tab; read the clipboard."""
    context = browser.new_context(permissions=['clipboard-read', 'clipboard-write'])
    page = context.new_page()
    page.set_default_timeout(5000)
    selectors = ', '.join(f'div.{name}' for name in SESSIONS)
    copied = 0
    try:
        for name in NAV:
            page.goto(page_url(served, name))
            labels = page.locator('.tabbed-labels > label').all_inner_texts()
            for label in [None, *dict.fromkeys(labels)]:
                if label is not None:  # linked tabs: one click shows that tab everywhere
                    page.locator('.tabbed-labels > label', has_text=label).first.click()
                expected = page.evaluate(VISIBLE_SESSIONS, selectors)
                pending = page.locator('[data-copied=pending]')
                assert pending.count() == len(expected)
                for shown in expected:
                    block = pending.first
                    block.hover()
                    block.locator('button[data-md-type=copy]').click()
                    text = page.evaluate('navigator.clipboard.readText()')
                    lines = [line for line in text.splitlines() if line.strip()]
                    assert lines == shown['commands'], f'{name}: copied {text!r}'
                    assert not set(shown['outputs']) & {line.strip() for line in lines}, text
                    assert not any(line.startswith(PROMPTS) for line in lines), text
                    block.evaluate('block => block.dataset.copied = "done"')
                    page.evaluate('navigator.clipboard.writeText("")')
                    copied += 1
    finally:
        context.close()
    assert copied >= 30


# The code blocks of the page whose lines are wider than the block: the first line of each.
# Code blocks wider than their box, but those of the stage diffs: a diff shows a server
# file's lines as they are (nginx's cipher list, a workflow's long expression).
TOO_WIDE = """
() => [...document.querySelectorAll('.md-typeset pre > code')]
  .filter(code => !code.closest('details.stage-diff'))
  .filter(code => code.scrollWidth > code.clientWidth + 1)
  .map(code => code.textContent.split('\\n')[0])
"""


def test_code_fits_a_1280_px_window_and_pages_a_375_px_one(served, browser):
    """On a laptop no code block scrolls sideways (a diff's may); on a phone (where long
    code lines must scroll inside their block) the page itself never does."""
    for width in (1280, 375):
        context = browser.new_context(viewport={'width': width, 'height': 900})
        page = context.new_page()
        try:
            for name in NAV:
                path = '' if name == 'index.md' else f'{name.removesuffix(".md")}/'
                page.goto(f'{served}/{path}')
                if width == 1280:
                    assert page.evaluate(TOO_WIDE) == [], name
                scroll = page.evaluate('document.documentElement.scrollWidth')
                assert scroll <= width, f'{name} is {scroll} px wide at {width} px'
        finally:
            context.close()


# The images of the page that did not load, by their source.
BROKEN_IMAGES = """
() => [...document.querySelectorAll('.md-typeset img')]
  .filter(img => !img.complete || img.naturalWidth === 0)
  .map(img => img.getAttribute('src'))
"""


def test_every_image_shows_with_no_network(served, browser):
    """Screenshots and diagrams load from the site itself: any request for another
    address is refused, and what the page shows (images, fonts, styles, scripts) is
    counted. The theme also asks GitHub's API for the repository's stars in the header,
    a fetch that nothing on the page waits for."""
    context = browser.new_context(viewport={'width': 1280, 'height': 900})
    outside = []

    def refuse(route):
        if route.request.resource_type not in ('fetch', 'xhr'):
            outside.append(route.request.url)
        route.abort()

    context.route(lambda url: not url.startswith(served), refuse)
    page = context.new_page()
    shown = 0
    try:
        for name in NAV:
            page.goto(page_url(served, name), wait_until='load')
            assert page.evaluate(BROKEN_IMAGES) == [], name
            shown += page.locator('.md-typeset img').count()
    finally:
        context.close()
    assert outside == []
    assert shown == sum((DOCS / page).read_text().count('![') for page in NAV)
