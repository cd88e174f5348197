"""The GitHub Actions workflows of the repository and of its stages, checked offline.

check-jsonschema validates each against GitHub's workflow schema (it ships the schema:
a typo'd key, an unknown event); zizmor --offline audits it (unpinned actions, checkout
credentials left on disk, template injection, excessive permissions). nox -s docs
installs both. A runner, the postgres service container and Pages itself only a real
GitHub run can check.
"""

import re

import pytest
import yaml

from tests.helpers.markdown import fenced_blocks_of
from tests.helpers.workflows import (
    assert_schema_refuses,
    assert_zizmor_finds,
    check_jsonschema,
    load,
    uses,
    zizmor,
)
from tools.stages import ROOT

pytestmark = pytest.mark.stages('repo')

FOLDER = ROOT / '.github' / 'workflows'
# The repository's own, then each stage's (stage 07 on).
WORKFLOWS = sorted(FOLDER.glob('*.y*ml')) + sorted(ROOT.glob('stages/*/.github/workflows/*.y*ml'))
USES = re.compile(r'^\s*(- )?uses:', re.MULTILINE)
PINNED = re.compile(r'^\s*(- )?uses: [\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(\.\d+)*$')
# A line that runs the README's test command as it stands (not echoed, no arguments).
each_workflow = pytest.mark.parametrize(
    'path', WORKFLOWS, ids=lambda path: str(path.relative_to(ROOT))
)
RUNS_TEST_COMMAND = re.compile(r'^(?!\s*(#|echo ))(.*\s)?python3 noxfile\.py$', re.MULTILINE)


def steps(workflow):
    return [step for job in workflow['jobs'].values() for step in job.get('steps', [])]


def changed(tmp_path, old, new):
    """tests.yml with one change, written into ``tmp_path``."""
    text = (FOLDER / 'tests.yml').read_text()
    assert old in text
    path = tmp_path / 'tests.yml'
    path.write_text(text.replace(old, new, 1))
    return path


def test_the_workflows_are_there():
    assert {path.name for path in FOLDER.iterdir()} >= {'tests.yml', 'docs.yml'}


@each_workflow
def test_workflow_passes_the_schema(path):
    result = check_jsonschema(path)
    assert result.returncode == 0, result.stdout + result.stderr


@each_workflow
def test_workflow_has_no_zizmor_finding_of_medium_severity_or_above(path):
    result = zizmor(path)
    assert result.returncode == 0, result.stdout + result.stderr


@each_workflow
def test_workflow_pins_actions_and_limits_what_its_jobs_may_do(path):
    text, workflow = path.read_text(), load(path)
    lines = [line for line in text.splitlines() if USES.match(line)]
    assert len(lines) == len([step for step in steps(workflow) if 'uses' in step])
    for line in lines:
        assert PINNED.match(line), f'{path.name}: not a commit SHA and its version: {line}'
    for name, job in workflow['jobs'].items():
        assert 'permissions' in job or 'permissions' in workflow, f'{path.name}: {name}'
    for step in uses('actions/checkout', steps(workflow)):
        assert step.get('with', {}).get('persist-credentials') is False, path.name


def test_a_typo_d_key_fails_the_schema(tmp_path):
    assert_schema_refuses(changed(tmp_path, 'runs-on:', 'runs-onn:'), 'runs-onn')


def test_an_unknown_event_fails_the_schema(tmp_path):
    assert_schema_refuses(changed(tmp_path, '\n  push:\n', '\n  pushh:\n'), 'pushh')


def test_an_unpinned_action_fails_zizmor(tmp_path):
    text = (FOLDER / 'tests.yml').read_text()
    pinned = re.search(r'actions/checkout@[0-9a-f]{40} # v[\d.]+', text)[0]
    assert_zizmor_finds(changed(tmp_path, pinned, 'actions/checkout@v7'), 'unpinned-uses')


def test_a_checkout_that_keeps_its_credentials_fails_zizmor(tmp_path):
    keep = '        with:\n          persist-credentials: false\n'
    result = zizmor(changed(tmp_path, keep, ''))
    assert result.returncode != 0
    assert '[artipacked]' in result.stdout


def test_tests_workflow_runs_the_readme_test_command():
    readme = (ROOT / 'README.md').read_text()
    quick_start = readme.split('\n## Quick start\n')[1].split('\n## ')[0]
    blocks = [body for language, body in fenced_blocks_of(quick_start) if language == 'console']
    assert 'python3 noxfile.py' in [line for block in blocks for line in block.splitlines()]
    workflow = load(FOLDER / 'tests.yml')
    assert {'push', 'pull_request'} <= set(workflow['on'])
    assert uses('actions/setup-python', steps(workflow))
    runs = '\n'.join(step.get('run', '') for step in steps(workflow))
    ci_run = (ROOT / '.ci' / 'run').read_text()
    # Directly, or through .ci/run (which also installs the apt packages the tests need).
    assert RUNS_TEST_COMMAND.search(runs) or (
        re.search(r'(^|\s)\.ci/run$', runs, re.MULTILINE) and RUNS_TEST_COMMAND.search(ci_run)
    ), 'tests.yml runs neither python3 noxfile.py nor .ci/run'
    # .ci/run's second pass uses the PostgreSQL at 127.0.0.1:5432: the service container.
    if 'postgresql://postgres@127.0.0.1:5432/' in ci_run:
        (job,) = workflow['jobs'].values()
        assert '5432:5432' in job['services']['postgres']['ports']


def test_docs_workflow_builds_strictly_and_only_its_deploy_job_writes():
    workflow = load(FOLDER / 'docs.yml')
    assert workflow['on']['push'] == {'branches': ['main']}
    build = [step.get('run') for step in workflow['jobs']['build']['steps']]
    assert build.index('pip install -r docs/requirements.txt') < build.index(
        'mkdocs build --strict'
    )
    (upload,) = uses('actions/upload-pages-artifact', steps(workflow))
    assert upload['with']['path'] == yaml.safe_load((ROOT / 'mkdocs.yml').read_text()).get(
        'site_dir', 'site'
    )
    for name, job in workflow['jobs'].items():
        permissions = job.get('permissions', workflow['permissions'])
        writes = {scope for scope, access in permissions.items() if access == 'write'}
        deploys = bool(uses('actions/deploy-pages', job['steps']))
        assert writes == ({'pages', 'id-token'} if deploys else set()), name
        if deploys:
            assert job['environment']['name'] == 'github-pages'
            assert job['needs'] == 'build'
