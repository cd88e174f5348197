"""The docs show stage code only by including the stage files, and only commands we run."""

import re

import pytest

from tests.reader import fenced_blocks, readme_blocks, readme_commands
from tools.stages import ROOT, STAGES

pytestmark = pytest.mark.stages('repo')

DOCS = ROOT / 'docs'
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$')

# Commands the docs show that no stage README has, and the test that runs each.
RUN_BY = {
    'python3 noxfile.py -s diff -- 01 02': 'test_tooling.py',
    'python3 noxfile.py -s serve -- 03': 'test_tooling.py',
    'mkdir -p -m 700 ~/.ssh': 'test_tooling.py',
    'ssh-keygen -t ed25519 -f ~/.ssh/app_deploy': 'test_tooling.py',
    'cat ~/.ssh/app_deploy.pub': 'test_tooling.py',
    'python3 noxfile.py -s stage03': 'test_tooling.py',
    'python3 noxfile.py': '../.ci/run',
}
# Commands no test here can run, and why; something else checks what they rely on.
NOT_RUN = {
    'ssh -i ~/.ssh/app_deploy root@your_server_ip': 'logs in to your own server',
    'conda env create -f environment.yml': 'needs conda; test_environment_files checks the file',
    'conda activate app-deploy': 'needs conda',
}


def blocks():
    """Every fenced block of the docs: (page, language, body)."""
    for page in sorted(DOCS.glob('*.md')):
        for language, body in fenced_blocks(page):
            yield page.name, language, body


def stage_code_lines():
    """The lines of every stage file that is code or settings (not the READMEs)."""
    lines = set()
    for stage in STAGES.values():
        for path in stage.rglob('*'):
            if path.is_file() and path.suffix != '.md' and '__pycache__' not in path.parts:
                lines.update(line.strip() for line in path.read_text().splitlines())
    return {line for line in lines if len(line) >= 12}


def test_every_included_file_exists_and_blocks_hold_only_the_include():
    included = 0
    for page, _, body in blocks():
        lines = body.splitlines()
        if any(SNIPPET.match(line) for line in lines):
            assert len(lines) == 1, f'{page}: a block that includes a file must hold only that'
            assert (ROOT / 'stages' / SNIPPET.match(lines[0])[1]).is_file(), f'{page}: {lines}'
            included += 1
    assert included >= 20


def test_no_stage_code_is_pasted():
    code = stage_code_lines()
    for page, language, body in blocks():
        for line in body.splitlines():
            assert line.strip() not in code, f'{page} pastes stage code ({language}): {line}'


def test_every_command_is_one_a_test_runs():
    readme = {line for stage in STAGES.values() for line in readme_commands(stage)}
    readme_bodies = {
        language: {body for stage in STAGES.values() for body in readme_blocks(stage, language)}
        for language in ('sql', 'python')
    }
    for page, language, body in blocks():
        if language == 'console':
            for command in body.splitlines():
                assert command in readme | RUN_BY.keys() | NOT_RUN.keys(), f'{page}: {command}'
        elif language in ('sql', 'python') and not SNIPPET.match(body.strip()):
            assert body in readme_bodies[language], f'{page}: a {language} session no test runs'


def test_commands_outside_the_readmes_are_in_their_tests():
    tests = ROOT / 'tests'
    for command, where in RUN_BY.items():
        source = (tests / where).read_text()
        assert command in source, f'{where} does not run {command}'


def test_every_part_page_ends_with_a_generated_diff():
    for page in ('part-1-server.md', 'part-2-database-config.md', 'part-3-tests.md'):
        tail = (DOCS / page).read_text().split('## What changed since the previous stage')
        assert len(tail) == 2, page
        assert re.fullmatch(r'\n\n<!-- stage-diff \S+ \S+ -->\n', tail[1]), page
