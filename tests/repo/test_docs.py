"""The rules of the docs, checked on the Markdown of every page in mkdocs.yml's nav.

Conventions (each one checked below; a new page, such as Part 4, follows them all):

1. Stage code only by inclusion: a fenced block that holds one line,
   ``--8<-- "NN-stage/path" from "START" to "END"`` (``from``/``to`` optional; see
   tools/docs_hooks.py), showing at most MAX_SHOWN lines of at most MAX_WIDTH characters.
   The hook adds the file name, the real line numbers, and highlights on the lines that
   are new since the previous stage. No stage line is ever pasted.
2. Commands: ```console blocks, each command after "$ ", anything else is output;
   ```pycon for Python sessions. A command is one that a stage README has (the stage
   walkthrough tests run those), or is in RUN_BY with the test file that runs it, or in
   NOT_RUN with the reason no test can. Where PowerShell differs, content tabs "bash"
   and "PowerShell" hold twin blocks, the PowerShell one ```ps1con with "PS> " prompts,
   each line powershell() of its bash twin. Steps that differ by system use tabs
   "Debian/Ubuntu", "macOS", "Windows" (checked in ADMIN below).
3. A page opens with "# Title" (its title in the nav), a paragraph, then
   ``!!! abstract "By the end you will have"``; it ends with ``## Recap``, then, if its
   stage changed code, ``## What changed since the previous stage`` and
   ``<!-- stage-diff PREVIOUS THIS -->`` (never for an unchanged stage), then a last
   paragraph ``**Next:** [Title](next-page.md)`` followed by the line ``{ .next-part }``,
   linking the next page of the nav with its nav title (the last page of the nav names
   what comes, without a link; when a page is added after it, its Next line becomes the
   link). Home has only the Next paragraph.
4. A screenshot is ``![what it shows](screenshots/stageNN.png){ .screenshot }``; a diagram
   is ``![its title](diagrams/NAME.svg){ .diagram }``, an SVG drawn by hand.
5. The repository's address is written once, as repo_url in mkdocs.yml; pages write
   ``{{ repo_url }}``.

The built site (definition lists, collapsed diffs kept out of search, Next links, framed
screenshots, what the copy button copies, code that fits a 1280 px window) is checked in
test_docs_site.py; the commands and the
troubleshooting messages of the PostgreSQL page in test_troubleshooting.py.
"""

import importlib
import os
import re
import subprocess

import pytest

from tests.helpers.docs import CONFIG, DOCS, NAV, TITLES, docs_hooks, pages
from tests.helpers.markdown import (
    commands,
    fenced_blocks,
    fenced_blocks_of,
    readme_blocks,
    readme_commands,
    tab_sets,
)
from tools.stages import ROOT, STAGES

pytestmark = pytest.mark.stages('repo')

MAX_SHOWN = 30  # lines of one included block
MAX_WIDTH = 99  # characters of one included line (the stages' ruff line-length)

# Commands the docs show that no stage README has, and the test file that runs each.
RUN_BY = {
    'git clone {{ repo_url }}': 'repo/test_docs.py',
    'cd app-deploy': 'repo/test_docs.py',
    'cd stages/01-hello-world': 'repo/test_docs.py',
    'python3 noxfile.py -s diff -- 01 02': 'repo/test_tooling.py',
    'python3 noxfile.py -s serve -- 03': 'repo/test_tooling.py',
    'mkdir -p -m 700 ~/.ssh': 'repo/test_tooling.py',
    'ssh-keygen -t ed25519 -f ~/.ssh/app_deploy': 'repo/test_tooling.py',
    'cat ~/.ssh/app_deploy.pub': 'repo/test_tooling.py',
    'python3 noxfile.py -s stage03': 'repo/test_tooling.py',
    'python3 noxfile.py': '../.ci/run',
    'createuser --createdb --pwprompt app_deploy': 'repo/test_troubleshooting.py',
    'createdb --owner=app_deploy app_deploy_development': 'repo/test_troubleshooting.py',
    'createdb --owner=app_deploy app_deploy_test': 'repo/test_troubleshooting.py',
    'export DEV_DATABASE_URL="postgresql://app_deploy:<password>@localhost:5432/'
    'app_deploy_development"': 'repo/test_troubleshooting.py',
    'psql "$DEV_DATABASE_URL" -c \'select 1\'': 'repo/test_troubleshooting.py',
    'flask create-tables': 'repo/test_troubleshooting.py',
    'uv pip compile requirements.txt --generate-hashes --python-version 3.13'
    ' --python-platform x86_64-manylinux_2_17 -o deploy/requirements-server.txt': 'stages/test_06_deploy.py',
    'nft list chain inet filter input | grep counter': 'stages/test_06_deploy.py',
}
# Commands no test here can run, and why; something else checks what they rely on.
NOT_RUN = {
    'ssh -i ~/.ssh/app_deploy root@your_server_ip': 'logs in to your own server',
    'sudo apt install postgresql': 'installs a system package',
    'brew install postgresql@18': 'macOS only',
    'brew services start postgresql@18': 'macOS only',
    'ssh-add ~/.ssh/app_deploy': 'asks for the passphrase of your own key; stages/test_06_deploy.py'
    ' gives pyinfra its key with --key',
    'python3 noxfile.py -s standin -- staging production --key ~/.ssh/app_deploy.pub': (
        'runs until Ctrl-C, as root; repo/test_standin.py runs the session with one server'
        " and lets a reader's key in through --key"
    ),
    'git push': 'pushes to your repository on GitHub; stages/test_07_ci_cd.py replays the CI and'
    ' staging jobs that the push starts there',
    'git tag v1.0.0 && git push origin v1.0.0': 'pushes a tag to GitHub; stages/test_07_ci_cd.py'
    ' replays the production job that the tag starts there',
}
# The steps that differ by system: the Windows line names the administrator, and the
# Debian/Ubuntu line runs the macOS one as the system user postgres.
ADMIN = {
    'Debian/Ubuntu': lambda line: 'sudo -u postgres ' + line,
    'Windows': lambda line: re.sub(r'^(\S+) ', r'\1 --username=postgres ', line),
}


def blocks():
    """Every fenced block of the pages: (page name, language, body)."""
    for page in pages():
        for language, body in fenced_blocks(page):
            yield page.name, language, body


def powershell(line):
    """The PowerShell twin of a bash command line, by the few rules the pages use."""
    if line == '. .venv/bin/activate':
        return r'.venv\Scripts\Activate.ps1'
    export = re.fullmatch(r'export (\w+)=(?:"(.*)"|(\S*))', line)
    if export:
        return f'$env:{export[1]} = "{export[2] if export[2] is not None else export[3]}"'
    line = re.sub(r'^mkdir -p -m 700 ', 'New-Item -ItemType Directory -Force ', line)
    line = re.sub(r'^python3 ', 'python ', line)
    line = line.replace('~/', '$HOME/')
    return re.sub(r'"\$(\w+)"', r'$env:\1', line)


def test_the_nav_names_every_page_once():
    assert sorted(NAV) == sorted(path.name for path in DOCS.glob('*.md'))
    assert NAV[0] == 'index.md'


def test_code_is_included_from_the_stage_files_and_short():
    included = 0
    for page, _, body in blocks():
        if '--8<--' not in body:
            continue
        match = docs_hooks.INCLUDE.search(f'```x\n{body}```')
        assert match, f'{page}: a block that includes a file holds only that line: {body}'
        path = ROOT / 'stages' / match['path']
        assert path.is_file(), f'{page}: {match["path"]}'
        lines = path.read_text().splitlines()
        first, last = docs_hooks.line_range(lines, match['start'], match['end'])
        shown = lines[first - 1 : last]
        assert len(shown) <= MAX_SHOWN, f'{page}: {body.strip()} shows {len(shown)} lines'
        for line in shown:
            assert len(line) <= MAX_WIDTH, f'{page}: {match["path"]}: too wide: {line}'
        included += 1
    assert included >= 25


def test_include_ranges_follow_the_code():
    lines = ['import x', '', '@decorator(', "    'a',", ')', 'def f():', '    return 1', '', 'y']
    assert docs_hooks.line_range(lines, 'def f') == (3, 7)
    assert docs_hooks.line_range(lines, 'import', 'def f') == (1, 6)
    assert docs_hooks.line_range(lines) == (1, 9)
    with pytest.raises(ValueError, match='no line contains'):
        docs_hooks.line_range(lines, 'missing')


def test_new_lines_are_those_the_previous_stage_lacked():
    new = docs_hooks.new_lines('03-tests/app/names.py')
    lines = (STAGES['03'] / 'app' / 'names.py').read_text().splitlines()
    assert {lines[n - 1].strip() for n in new} == {
        'names = db.session.scalars(db.select(Name).order_by(Name.id)).all()',
        "return render_template('index.html', form=form, names=names)",
    }
    assert docs_hooks.new_lines('02-database-config/app/names.py') == set()  # a new file


def stage_code_lines():
    """The lines of every stage file that is code or settings (not the READMEs)."""
    lines = set()
    for stage in STAGES.values():
        for path in stage.rglob('*'):
            if path.is_file() and path.suffix != '.md' and '__pycache__' not in path.parts:
                lines.update(line.strip() for line in path.read_text().splitlines())
    return {line for line in lines if len(line) >= 12}


def test_no_stage_code_is_pasted():
    code = stage_code_lines()
    for page, language, body in blocks():
        for line in body.splitlines():
            assert line.strip() not in code, f'{page} pastes stage code ({language}): {line}'


def test_every_command_is_one_a_test_runs():
    readme = {line for stage in STAGES.values() for line in readme_commands(stage)}
    sessions = {body for stage in STAGES.values() for body in readme_blocks(stage, 'python')}
    known = readme | RUN_BY.keys() | NOT_RUN.keys()
    seen = set()
    for page, language, body in blocks():
        if language == 'console':
            assert body.startswith('$ '), f'{page}: a console block starts with a command'
            for command in commands(language, body):
                # The Debian/Ubuntu twin of a macOS step (see ADMIN) is run in its place.
                if command not in known:
                    command = command.removeprefix('sudo -u postgres ')
                assert command in known, f'{page}: no test runs {command}'
                seen.add(command)
        elif language == 'pycon':
            assert body in sessions, f'{page}: a Python session no test runs'
        elif '--8<--' not in body:  # not an included file: a PowerShell session or a pattern
            assert language in ('ps1con', 'text'), f'{page}: a {language} block'
    assert seen >= RUN_BY.keys() - {'python3 noxfile.py'} | NOT_RUN.keys()


def test_commands_outside_the_readmes_are_in_their_tests():
    """Each command is written in the test that runs it, or in that test module's RUNS."""
    for command, where in RUN_BY.items():
        path = ROOT / 'tests' / where
        runs = []
        if path.suffix == '.py':
            module = '.'.join(path.relative_to(ROOT).with_suffix('').parts)
            runs = getattr(importlib.import_module(module), 'RUNS', [])
        assert command in path.read_text() or command in runs, f'{where} runs {command}'


def test_powershell_lines_are_the_translations_of_their_bash_twins():
    twins = 0
    for page in pages():
        powershell_blocks = [
            body for language, body in fenced_blocks(page) if language == 'ps1con'
        ]
        paired = []
        for tabs in tab_sets(page):
            if 'PowerShell' in tabs:
                assert set(tabs) == {'bash', 'PowerShell'}, f'{page.name}: {set(tabs)}'
                ((_, bash),), ((_, ps),) = tabs['bash'], tabs['PowerShell']
                assert [powershell(line) for line in commands('console', bash)] == commands(
                    'ps1con', ps
                ), page.name
                outputs = [
                    [line for line in body.splitlines() if not line.startswith(p)]
                    for body, p in ((bash, '$ '), (ps, 'PS> '))
                ]
                assert outputs[0] == outputs[1], f'{page.name}: the twins print the same'
                paired.append(ps)
                twins += 1
            windows = [body for language, body in tabs.get('Windows', []) if language == 'ps1con']
            if windows:  # a step as the administrator (installing has no Windows command)
                assert set(tabs) == {'Debian/Ubuntu', 'macOS', 'Windows'}, page.name
                mac = [line for _, body in tabs['macOS'] for line in commands('console', body)]
                debian = [
                    line for _, body in tabs['Debian/Ubuntu'] for line in commands('console', body)
                ]
                win = [line for body in windows for line in commands('ps1con', body)]
                assert debian == [ADMIN['Debian/Ubuntu'](line) for line in mac], page.name
                assert win == [ADMIN['Windows'](line) for line in mac], page.name
                paired += windows
        assert sorted(paired) == sorted(powershell_blocks), f'{page.name}: a lone PowerShell block'
    assert twins >= 8


def test_powershell_rules():
    assert powershell('export FLASK_APP=app.py') == '$env:FLASK_APP = "app.py"'
    assert powershell('psql "$DEV_DATABASE_URL" -c \'select 1\'') == (
        "psql $env:DEV_DATABASE_URL -c 'select 1'"
    )
    assert powershell('python3 -m venv .venv') == 'python -m venv .venv'
    assert powershell('flask run') == 'flask run'


def test_every_page_opens_and_ends_the_same_way():
    for number, page in enumerate(pages()):
        text = page.read_text()
        lines = text.rstrip('\n').splitlines()
        assert lines[0] == f'# {TITLES[number]}' or number == 0, f'{page.name}: its title'
        assert lines[-1] == '{ .next-part }', f'{page.name} ends with its Next line'
        nxt = ' '.join(text.rstrip('\n').split('\n\n')[-1].splitlines()[:-1])  # may wrap
        if number + 1 < len(NAV):
            expected = f'**Next:** [{TITLES[number + 1]}]({NAV[number + 1]})'
            assert nxt == expected, f'{page.name} should end with {expected}'
        else:
            assert nxt.startswith('**Next:** ') and '](' not in nxt, page.name
        if page.name == 'index.md':
            continue
        opening = text.split('\n## ')[0]
        assert '\n!!! abstract "By the end you will have"\n' in opening, page.name
        ending = text.split('\n## Recap\n')
        assert len(ending) == 2, f'{page.name} has one Recap'
        assert not re.search(r'^## (?!What changed since the previous stage)', ending[1], re.M)


def test_a_diff_ends_each_part_that_changed_code():
    order = [stage.name for stage in STAGES.values()]
    for page in pages():
        markers = docs_hooks.DIFF_MARKER.findall(page.read_text())
        for old, new in markers:
            assert order.index(new) == order.index(old) + 1, f'{page.name}: {old} {new}'
            ending = f'## What changed since the previous stage\n\n<!-- stage-diff {old} {new} -->'
            assert f'\n{ending}\n\n**Next:**' in page.read_text(), page.name
        assert len(markers) <= 1, page.name


def test_screenshots_are_framed_and_diagrams_say_in_words_what_they_draw():
    diagrams = 0
    for page in pages():
        for alt, path, after in re.findall(r'!\[([^\]]+)\]\(([^)]+)\)(.*)', page.read_text()):
            assert (DOCS / path).is_file(), f'{page.name}: {path}'
            if path.startswith('diagrams/'):
                # An SVG drawn here, whose title, which screen readers read, is the alt text.
                title = re.search(r'<title id="title">(.*?)</title>', (DOCS / path).read_text())
                assert title and title[1] == alt, f'{page.name}: {path} and its alt text'
                assert after == '{ .diagram }', f'{page.name}: {path}'
                diagrams += 1
            else:
                assert after == '{ .screenshot }', f'{page.name}: {path} is framed'
    assert diagrams >= 4  # Parts 5-8: a request, a release, a commit, an image


def test_repository_address_is_written_once():
    url = CONFIG['repo_url']
    found = subprocess.run(
        ['git', 'grep', '-l', '-F', url], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert found == ['mkdocs.yml'], found
    assert (ROOT / 'mkdocs.yml').read_text().count(url) == 1


def test_clone_command_clones_the_repository(tmp_path):
    """The page's clone lines, run with git told to fetch repo_url from this repository."""
    getting_started = (DOCS / 'getting-started.md').read_text()
    clone = docs_hooks.on_page_markdown(getting_started, None, CONFIG, None)
    lines = [line for _, body in fenced_blocks_of(clone) for line in commands('console', body)]
    assert lines[:3] == [
        f'git clone {CONFIG["repo_url"]}',
        'cd app-deploy',
        'cd stages/01-hello-world',
    ]
    assert 'git clone {{ repo_url }}' in getting_started
    env = {
        **os.environ,
        'GIT_CONFIG_COUNT': '1',
        'GIT_CONFIG_KEY_0': f'url.{ROOT}.insteadOf',
        'GIT_CONFIG_VALUE_0': CONFIG['repo_url'],
    }
    subprocess.run(lines[0].split(), cwd=tmp_path, env=env, check=True, capture_output=True)
    for line in lines[1:3]:
        assert line.startswith('cd ')
        tmp_path = tmp_path / line[3:]
        assert tmp_path.is_dir(), line
    assert (tmp_path / 'app.py').is_file()
