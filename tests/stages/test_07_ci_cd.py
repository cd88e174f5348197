"""Stage 07: the workflows checked offline, and their steps replayed here.

The checks: check-jsonschema against GitHub's workflow schema and zizmor --offline (no
finding of medium severity or above), each on every workflow of the stage; both come
with the stage's requirements-dev.txt, which the stage07 session installs.

The replay reads a job of a workflow and runs its `run:` steps in order, each with
`bash -e` (the runner's default shell) in a folder that stands for the checkout, with
the job's and the step's `env:` and the `${{ }}` expressions they use set, a step
skipped after a failure unless its `if:` is `always()`. What only makes sense on
GitHub is replaced by a local equivalent:

- `actions/checkout`: a copy of the stage (ci.yml), or a `git clone` of the reader's
  project at the commit the job names (deploy.yml).
- `actions/setup-python`: the stage07 session's environment, first on PATH. One Python,
  the session's, not the matrix.
- `pip install -r ...`: run as written, but with PIP_NO_INDEX=1: the session installed
  requirements-dev.txt, so the step passes only if it asks for nothing more.
- the `postgres` service container: a new database on the tests' PostgreSQL, its URL in
  place of the service's in the job's `env:`.
- `vars` and `secrets`: the stand-in servers of stage 06 (tools/standin/) as
  staging and production, the run's ssh key, and the servers' known_hosts.
- the runner's DNS and the sites' certificates, for the health check over HTTPS: each
  step runs in a mount namespace of its own (`unshare -m`) whose /etc/hosts maps the
  sites' domains to the stand-ins, and CURL_CA_BUNDLE holds the stand-ins' self-signed
  certificates (on GitHub, Let's Encrypt's, which the runner trusts).
- `actions/upload-artifact`, the `gh api` step that finds the staging run's artifact,
  and `actions/download-artifact`: a folder per artifact name in the test's folder.

What only a real GitHub run can check: the runner image, the service container and its
health options, the matrix, the event filters and `if:` conditions, environments with
their reviewers, secrets and variables, `concurrency`, the artifact API, and the
actions themselves.
"""

import dataclasses
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.helpers.deploy import (
    DOMAINS,
    Project,
    authorize,
    current,
    new_key,
    ssh,
    sudo_allows,
    wait_for_the_lock,
)
from tests.helpers.markdown import readme_commands
from tests.helpers.workflows import (
    assert_schema_refuses,
    assert_zizmor_finds,
    load,
    uses,
    zizmor,
)
from tools.stagediff import changed_files
from tools.stages import STAGES

pytestmark = pytest.mark.stages('07')

STAGE = STAGES['07']
FOLDER = STAGE / '.github' / 'workflows'
WORKFLOWS = sorted(FOLDER.glob('*.y*ml'))
EXPRESSION = re.compile(r'\$\{\{\s*(.*?)\s*\}\}')
LOCK_MESSAGE = 'another deploy to staging is running; try again when it ends'


def workflow(name):
    return load(FOLDER / name)


# --- The replay ------------------------------------------------------------------------


def evaluate(text, context):
    """``text`` with each ``${{ a || b }}`` replaced from ``context`` (a flat dict:
    'vars.STAGING_HOST': ...). An expression the replay does not know fails the test."""

    def value(match):
        for operand in (part.strip() for part in match[1].split('||')):
            if operand not in context:
                raise AssertionError(f'the replay has no value for {operand}')
            if context[operand]:
                return str(context[operand])
        return ''

    return EXPRESSION.sub(value, str(text))


class StepResult(NamedTuple):
    """How one step of a replayed job ended."""

    label: str  # the step's name, its `uses:` or its `run:`
    code: int | None  # its exit code; None when it was skipped
    output: str


class Replay:
    """One job of a workflow, its steps run here in order (the module docstring says how).

    ``local`` maps an action (``actions/checkout``) or a step's ``id`` to a function
    (replay, step, with_) -> exit code that does the step here instead.
    """

    def __init__(self, workflow_name, job, tmp_path, path, context, local, hosts=None):
        self.job = workflow(workflow_name)['jobs'][job]
        self.tmp, self.context, self.local = tmp_path, dict(context), local
        self.workspace = tmp_path / 'workspace'
        self.runner_temp = tmp_path / 'runner-temp'
        self.runner_temp.mkdir(parents=True)
        self.hosts = hosts  # an /etc/hosts for the steps, or None
        self.base_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(('FLASK_', 'TEST_'))},
            'PATH': f'{path}{os.pathsep}{os.environ["PATH"]}',
            'CI': 'true',
            'GITHUB_ACTIONS': 'true',
            'GITHUB_WORKSPACE': str(self.workspace),
            'GITHUB_REPOSITORY': 'reader/app-deploy',
            'RUNNER_TEMP': str(self.runner_temp),
        }
        self.results = []  # a StepResult per step, in order
        self.failed = False
        self.position = 0

    def env(self, step):
        job_env = {k: evaluate(v, self.context) for k, v in self.job.get('env', {}).items()}
        step_env = {k: evaluate(v, self.context) for k, v in step.get('env', {}).items()}
        return {**self.base_env, **job_env, **step_env}

    @staticmethod
    def label(step):
        return step.get('name') or step.get('run') or step['uses'].split('@')[0]

    def command(self, step):
        """The command that runs the ``run:`` of ``step``, and the folder it runs in."""
        script = self.runner_temp / f'step-{self.position}.sh'
        script.write_text(step['run'])
        default = self.job.get('defaults', {}).get('run', {}).get('working-directory', '.')
        cwd = self.workspace / step.get('working-directory', default)
        assert step.get('shell') in (None, 'bash'), step
        command = ['bash', '-e', str(script)]
        if self.hosts:
            command = [
                *('unshare', '--mount', '--', 'bash', '-c'),
                'mount --bind "$0" /etc/hosts && exec "$@"',
                str(self.hosts),
                *command,
            ]
        return command, cwd

    def start(self, step):
        """Start the ``run:`` step ``step``; return the process, its output piped."""
        command, cwd = self.command(step)
        env = self.env(step)
        if step['run'].startswith('pip install '):
            env['PIP_NO_INDEX'] = '1'  # what the session installed, or fail
        output = self.runner_temp / f'output-{self.position}'
        output.write_text('')
        env['GITHUB_OUTPUT'] = str(output)
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def outputs(self, step):
        """What the step wrote to $GITHUB_OUTPUT, into the context as steps.ID.outputs."""
        output = self.runner_temp / f'output-{self.position}'
        if step.get('id') and output.exists():
            for line in output.read_text().splitlines():
                key, _, value = line.partition('=')
                self.context[f'steps.{step["id"]}.outputs.{key}'] = value

    def step(self, step, process=None):
        """Run one step (or wait for ``process``, started by start()); record its result."""
        condition = step.get('if')
        assert condition in (None, 'always()'), condition
        if self.failed and condition != 'always()':
            self.results.append(StepResult(self.label(step), None, ''))
        elif 'run' in step and step.get('id') not in self.local:
            process = process or self.start(step)
            output, _ = process.communicate(timeout=600)
            self.outputs(step)
            self.results.append(StepResult(self.label(step), process.returncode, output))
        else:
            key = step.get('id') if step.get('id') in self.local else step['uses'].split('@')[0]
            assert key in self.local, f'no local equivalent for {key}'
            with_ = {k: evaluate(v, self.context) for k, v in step.get('with', {}).items()}
            code = self.local[key](self, step, with_)
            self.outputs(step)
            self.results.append(StepResult(self.label(step), code, ''))
        self.failed = self.failed or self.results[-1].code not in (0, None)
        self.position += 1
        return self.results[-1]

    def run(self, until=None):
        """Run the steps in order, up to the one named ``until`` (not run); return self."""
        while self.position < len(self.job['steps']):
            step = self.job['steps'][self.position]
            if until and step.get('name') == until:
                break
            self.step(step)
        return self

    def result(self, label):
        (found,) = [result for result in self.results if result.label == label]
        return found

    @property
    def output(self):
        return '\n'.join(f'--- {label} ({code}):\n{out}' for label, code, out in self.results)

    @property
    def passed(self):
        return bool(self.results) and all(code == 0 for _, code, _ in self.results)


def setup_python(replay, step, with_):
    assert re.fullmatch(r'3\.\d+', with_['python-version']), with_
    return 0  # the session's Python, first on PATH


def copy_stage(replay, step, with_):
    assert step['with']['persist-credentials'] is False
    shutil.copytree(
        STAGE,
        replay.workspace,
        ignore=shutil.ignore_patterns('__pycache__', '.venv', '.pytest_cache', 'build'),
    )
    return 0


def python_version(bin_dir):
    command = [Path(bin_dir) / 'python', '-c', 'import sys; print(*sys.version_info[:2], sep=".")']
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def run_commands(job):
    return [step['run'] for step in workflow('ci.yml')['jobs'][job]['steps'] if 'run' in step]


# --- The workflows, checked offline ----------------------------------------------------


def test_the_workflows_are_there():
    assert [path.name for path in WORKFLOWS] == ['ci.yml', 'deploy.yml']


@pytest.mark.parametrize('path', WORKFLOWS, ids=lambda path: path.name)
def test_no_job_may_write(path):
    """Schema, zizmor, pins and checkouts: tests/test_workflows.py, for every workflow."""
    loaded = load(path)
    assert loaded.get('permissions') in ({}, {'contents': 'read'}), loaded.get('permissions')
    for name, job in loaded['jobs'].items():
        permissions = job.get('permissions', loaded.get('permissions'))
        assert set(permissions.values()) <= {'read'}, f'{path.name}: {name} writes'


def test_the_one_zizmor_suppression_is_the_guarded_workflow_run():
    """workflow_run is zizmor's "dangerous trigger"; deploy.yml silences it on that line
    alone, because its staging job runs only for a push to main of this repository."""
    for path in WORKFLOWS:
        ignores = [line for line in path.read_text().splitlines() if 'zizmor: ignore' in line]
        expected = ['workflow_run'] if path.name == 'deploy.yml' else []
        assert [line.split(':')[0].strip() for line in ignores] == expected, path.name
    condition = workflow('deploy.yml')['jobs']['staging']['if']
    for part in (
        "github.event_name == 'workflow_run'",
        "github.event.workflow_run.conclusion == 'success'",
        "github.event.workflow_run.event == 'push'",
        'github.event.workflow_run.head_repository.full_name == github.repository',
    ):
        assert part in condition


def changed(tmp_path, name, old, new):
    """The stage's workflow ``name`` with one change, written into ``tmp_path``."""
    text = (FOLDER / name).read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return path


def test_a_typo_d_key_fails_the_schema(tmp_path):
    assert_schema_refuses(changed(tmp_path, 'ci.yml', 'runs-on:', 'runs-onn:'), 'runs-onn')


def test_an_unknown_event_fails_the_schema(tmp_path):
    assert_schema_refuses(changed(tmp_path, 'ci.yml', '\n  pull_request:\n', '\n  pr:\n'), 'pr')


def test_an_unpinned_action_fails_zizmor(tmp_path):
    text = (FOLDER / 'deploy.yml').read_text()
    pinned = re.search(r'actions/download-artifact@[0-9a-f]{40} # v[\d.]+', text)[0]
    assert_zizmor_finds(
        changed(tmp_path, 'deploy.yml', pinned, 'actions/download-artifact@v8'), 'unpinned-uses'
    )


def test_untrusted_input_in_a_run_step_fails_zizmor(tmp_path):
    """A branch name is the pusher's to choose: in `run:` it would be run as code."""
    run = 'run: python3 build.py'
    injected = 'run: echo ${{ github.event.workflow_run.head_branch }} && python3 build.py'
    result = zizmor(changed(tmp_path, 'deploy.yml', run, injected))
    assert result.returncode != 0
    assert '[template-injection]' in result.stdout


def test_without_its_guard_comment_workflow_run_fails_zizmor(tmp_path):
    guarded = 'workflow_run: # zizmor: ignore[dangerous-triggers]'
    assert_zizmor_finds(
        changed(tmp_path, 'deploy.yml', guarded, 'workflow_run: #'), 'dangerous-triggers'
    )


def test_the_readme_commands_that_check_the_workflows_pass(tmp_path):
    commands = [line for line in readme_commands(STAGE) if line.startswith(('check-', 'zizmor'))]
    assert [command.split()[0] for command in commands] == ['check-jsonschema', 'zizmor']
    shutil.copytree(STAGE / '.github', tmp_path / '.github')
    for command in commands:
        result = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, command + result.stdout + result.stderr
    # Each finds its kind of mistake, in any of the workflows. (zizmor skips, with a
    # warning, a file that is not a workflow: the schema is check-jsonschema's.)
    ci, deploy = tmp_path / '.github/workflows/ci.yml', tmp_path / '.github/workflows/deploy.yml'
    ci.write_text(ci.read_text().replace('runs-on:', 'runs-onn:', 1))
    text = deploy.read_text()
    deploy.write_text(re.sub(r'(actions/upload-artifact@)[0-9a-f]{40}', r'\1v7', text))
    for command in commands:
        result = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode != 0, command
        assert ('runs-onn' if 'jsonschema' in command else 'unpinned-uses') in result.stdout


# --- What the workflows say, against the README and stage 06 ----------------------------


def test_ci_runs_the_readme_tests_on_the_promised_pythons_against_postgresql():
    readme = (STAGE / 'README.md').read_text()
    assert 'You need Python 3.11 or newer' in readme
    test = workflow('ci.yml')['jobs']['test']
    versions = test['strategy']['matrix']['python-version']
    assert versions[0] == '3.11' and len(versions) >= 2, versions
    assert test['runs-on'] == 'ubuntu-24.04'
    commands = readme_commands(STAGE)
    export = next(line for line in commands if line.startswith('export TEST_DATABASE_URL='))
    assert commands[commands.index(export) + 1] == 'pytest'
    assert run_commands('test') == [
        'pip install -r requirements-dev.txt',
        'pytest',
        'flask db upgrade',
        'flask db check',
    ]
    assert run_commands('lint')[1:] == ['ruff check', 'ruff format --check']
    assert {'ruff check', 'ruff format --check'} <= set(commands)  # the README's, too
    postgres = test['services']['postgres']
    assert re.fullmatch(r'postgres:\d+', postgres['image'])  # a major version, not latest
    assert '--health-cmd pg_isready' in postgres['options']
    url = test['env']['TEST_DATABASE_URL']
    assert url == f'postgresql://postgres@localhost:5432/{postgres["env"]["POSTGRES_DB"]}'
    assert postgres['ports'] == ['5432:5432']
    assert set(workflow('ci.yml')['on']) == {'push', 'pull_request'}


def test_deploy_runs_stage_06_commands_one_environment_at_a_time():
    jobs = workflow('deploy.yml')['jobs']
    stage_06 = readme_commands(STAGES['06'])
    for env, job in jobs.items():
        assert job['environment']['name'] == env
        assert job['concurrency'] == {'group': f'deploy-{env}', 'cancel-in-progress': False}
        assert job['defaults']['run']['working-directory'] == 'deploy'
        (deploy,) = [step['run'] for step in job['steps'] if 'pyinfra ' in step.get('run', '')]
        lines = deploy.replace('\\\n', ' ').splitlines()  # continued lines, as bash reads them
        command = ' '.join(next(line for line in lines if 'pyinfra ' in line).split())
        assert command.startswith(
            f'pyinfra inventory.py release.py --limit {env} -y --user deploy --key '
        )
        assert f'pyinfra inventory.py release.py --limit {env}' in stage_06
    assert 'python3 build.py' in stage_06
    staging = jobs['staging']
    assert [step['run'] for step in staging['steps'] if 'build.py' in step.get('run', '')] == [
        'python3 build.py'
    ]
    assert not [step for step in jobs['production']['steps'] if 'build.py' in step.get('run', '')]
    (checkout,) = uses('actions/checkout', staging['steps'])
    assert checkout['with']['ref'] == '${{ github.event.workflow_run.head_sha }}'
    events = workflow('deploy.yml')['on']
    assert events['workflow_run'] == {
        'workflows': ['CI'],
        'types': ['completed'],
        'branches': ['main'],
    }
    assert workflow('ci.yml')['name'] == 'CI'
    assert events['push'] == {'tags': ['v*']} and 'workflow_dispatch' in events


def test_the_readme_lists_the_new_files_and_what_to_set_in_github():
    readme = (STAGE / 'README.md').read_text()
    assert readme.splitlines()[0].startswith('# Stage 07: ')
    intro = readme.split('\n## ')[0]
    for name in ('.github/workflows/ci.yml', '.github/workflows/deploy.yml', 'ruff.toml'):
        assert f'`{name}`' in intro, name
    section = readme.split('\n## CI/CD')[1].split('\n## ')[0]
    text = (FOLDER / 'deploy.yml').read_text()
    for name in set(re.findall(r'\b(?:secrets|vars)\.([A-Z_]+)', text)):
        assert f'`{name}`' in section, name
    for env in ('staging', 'production'):
        assert f'`{env}`' in section
    assert 'required reviewers' in section.lower()


# --- ci.yml, replayed --------------------------------------------------------------------


def ci_replay(job, tmp_path, stage_bin, database=None):
    replay = Replay(
        'ci.yml',
        job,
        tmp_path,
        stage_bin,
        # The matrix has one Python here: the session's.
        context={'matrix.python-version': python_version(stage_bin)},
        local={'actions/checkout': copy_stage, 'actions/setup-python': setup_python},
    )
    if database:
        service = replay.job['env']['TEST_DATABASE_URL']
        assert service.startswith('postgresql://postgres@localhost:5432/')
        replay.job = {**replay.job, 'env': {**replay.job['env'], 'TEST_DATABASE_URL': database}}
    return replay


def test_ci_lint_job_passes_replayed(tmp_path, stage_bin):
    replay = ci_replay('lint', tmp_path, stage_bin).run()
    assert replay.passed, replay.output
    assert [label for label, *_ in replay.results][-2:] == ['ruff check', 'ruff format --check']


def test_ci_lint_job_fails_on_code_ruff_would_change(tmp_path, stage_bin):
    replay = ci_replay('lint', tmp_path, stage_bin)
    replay.step(replay.job['steps'][0])  # the checkout
    (replay.workspace / 'wsgi.py').write_text(
        (replay.workspace / 'wsgi.py').read_text() + '\nx = "double quotes"\n'
    )
    replay.run()
    assert replay.result('ruff check').code == 0
    label, code, output = replay.result('ruff format --check')
    assert code == 1 and '--> wsgi.py' in output and '1 file would be reformatted' in output


def test_ci_test_job_passes_replayed(tmp_path, stage_bin, database):
    replay = ci_replay('test', tmp_path, stage_bin, database).run()
    assert replay.passed, replay.output
    assert [code for *_, code, _ in replay.results] == [0] * 6
    assert re.search(r'\d+ passed', replay.result('pytest').output)
    assert ' skipped' not in replay.result('pytest').output


def test_ci_flask_db_check_fails_on_a_model_changed_without_a_migration(
    tmp_path, stage_bin, database
):
    replay = ci_replay('test', tmp_path, stage_bin, database)
    replay.step(replay.job['steps'][0])  # the checkout
    models = replay.workspace / 'app' / 'models.py'
    text = models.read_text()
    drifted = text.replace(
        '    def __repr__',
        '    note: Mapped[str | None] = mapped_column(String(200))\n\n    def __repr__',
    )
    assert drifted != text
    models.write_text(drifted)
    for step in replay.job['steps']:
        if step.get('run') in ('flask db upgrade', 'flask db check'):
            replay.step(step)
    assert replay.result('flask db upgrade').code == 0
    label, code, output = replay.result('flask db check')
    assert code == 1, output
    assert 'New upgrade operations detected' in output


# --- deploy.yml, replayed against the stand-in servers -------------------------------------


class Deploys:
    """The reader's project on the stand-ins, and the artifacts its deploy runs leave."""

    def __init__(self, project, servers, folder, bin_dir):
        self.project, self.servers, self.folder = project, servers, folder
        self.bin_dir = bin_dir
        self.artifacts = folder / 'artifacts'
        self.artifacts.mkdir()
        # CI's key, as the README says: in deploy's authorized_keys on both servers (the
        # production key's place; staging's own goes on staging alone), never root's.
        key = folder / 'ci_key'
        public = new_key(key)
        for host in servers.values():
            authorize(host, public)
        self.key_file, self.key = key, key.read_text()
        self.known_hosts = ''.join(host.known_hosts.read_text() for host in servers.values())
        self.hosts = folder / 'hosts'
        self.hosts.write_text(
            '127.0.0.1 localhost\n'
            + ''.join(f'{servers[env].address} {domain}\n' for env, domain in DOMAINS.items())
        )
        certificates = folder / 'certificates.pem'
        certificates.write_text(
            ''.join(
                ssh(host, 'cat /etc/app-deploy/tls/fullchain.pem') + '\n'
                for host in servers.values()
            )
        )
        self.certificates = certificates
        self.count = 0

    def head(self):
        return subprocess.run(
            ['git', 'rev-parse', 'HEAD'],
            cwd=self.project.folder,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def context(self, sha):
        context = {'github.sha': sha, 'github.event.workflow_run.head_sha': sha}
        context['github.token'] = 'not-used-here'
        context['secrets.SSH_PRIVATE_KEY'] = self.key
        context['secrets.KNOWN_HOSTS'] = self.known_hosts
        for env, host in self.servers.items():
            context[f'vars.{env.upper()}_HOST'] = host.address
            context[f'vars.{env.upper()}_DOMAIN'] = DOMAINS[env]
        return context

    def checkout(self, replay, step, with_):
        assert step['with']['persist-credentials'] is False
        sha = with_.get('ref') or replay.context['github.sha']
        subprocess.run(
            ['git', 'clone', '--quiet', str(self.project.folder), str(replay.workspace)],
            check=True,
        )
        subprocess.run(
            ['git', 'checkout', '--quiet', '--detach', sha], cwd=replay.workspace, check=True
        )
        return 0

    def upload(self, replay, step, with_):
        found = sorted(replay.workspace.glob(with_['path']))
        if not found:
            return 1 if with_.get('if-no-files-found') == 'error' else 0
        folder = self.artifacts / with_['name']
        folder.mkdir()  # GitHub refuses a second artifact of one name in a run, too
        for path in found:
            shutil.copy(path, folder)
        return 0

    def find(self, replay, step, with_):
        """The `gh api` step: is there an artifact release-<sha>? Its run's id, if so."""
        assert 'gh api' in step['run'] and 'actions/artifacts?name=release-$COMMIT' in step['run']
        name = f'release-{replay.context["github.sha"]}'
        if not (self.artifacts / name).is_dir():
            return 1
        (replay.runner_temp / f'output-{replay.position}').write_text('run-id=42\n')
        return 0

    def download(self, replay, step, with_):
        assert with_['run-id'] == '42' and with_['github-token']
        folder = replay.workspace / with_['path']
        folder.mkdir(parents=True, exist_ok=True)
        for path in (self.artifacts / with_['name']).iterdir():
            shutil.copy(path, folder)
        return 0

    def replay(self, job, sha=None):
        self.count += 1
        replay = Replay(
            'deploy.yml',
            job,
            self.folder / f'{job}-{self.count}',
            self.bin_dir,
            context=self.context(sha or self.head()),
            local={
                'actions/checkout': self.checkout,
                'actions/setup-python': setup_python,
                'actions/upload-artifact': self.upload,
                'staged': self.find,
                'actions/download-artifact': self.download,
            },
            hosts=self.hosts,
        )
        replay.base_env['CURL_CA_BUNDLE'] = str(self.certificates)
        return replay

    def archives(self, sha):
        return sorted(path.name for path in (self.artifacts / f'release-{sha}').iterdir())


@pytest.fixture(scope='module')
def servers(provisioned_servers):
    """Both servers provisioned by hand, as Part 6 has it (from the images stage 06
    kept, when its deploy/ is this one's: tests/helpers/deploy.py)."""
    return provisioned_servers


@pytest.fixture(scope='module')
def deploys(stage_bin, servers, tmp_path_factory):
    """The stage as a reader's git project, on the provisioned servers."""
    folder = tmp_path_factory.mktemp('deploys')
    project = Project(STAGE, folder / 'app', stage_bin, servers)
    return Deploys(project, servers, folder, stage_bin)


def release_name(archive):
    return archive.removesuffix('.tar.gz')


@pytest.fixture(scope='module')
def first_release(deploys, servers):
    sha = deploys.head()
    staging = deploys.replay('staging').run()
    assert staging.passed, staging.output
    production = deploys.replay('production').run()
    assert production.passed, production.output
    (archive,) = deploys.archives(sha)
    return release_name(archive), staging, production


def test_staging_then_production_run_the_same_release(first_release, deploys, servers):
    name, staging, production = first_release
    assert name.endswith(deploys.head()[:7])
    for env, host in servers.items():
        assert current(host, env) == name
    for replay in (staging, production):
        assert replay.result('Check /health over HTTPS').output.strip() == '{"status":"ok"}'
    # Production built nothing: the archive it deployed is the one staging uploaded.
    assert sorted(p.name for p in (production.workspace / 'deploy' / 'build').iterdir()) == [
        f'{name}.tar.gz'
    ]
    assert (production.workspace / 'deploy' / 'build' / f'{name}.tar.gz').read_bytes() == (
        staging.workspace / 'deploy' / 'build' / f'{name}.tar.gz'
    ).read_bytes()


def test_the_secrets_stay_in_files_of_mode_600_and_out_of_the_output(first_release, deploys):
    _, staging, production = first_release
    key_line = deploys.key.strip().splitlines()[1]
    for replay in (staging, production):
        assert key_line not in replay.output
        assert not (replay.runner_temp / 'deploy_key').exists()  # removed at the end
        known_hosts = replay.workspace / 'deploy' / 'known_hosts'
        assert known_hosts.stat().st_mode & 0o777 == 0o600
        status = subprocess.run(
            ['git', 'status', '--porcelain'], cwd=replay.workspace, capture_output=True, text=True
        )
        assert 'deploy_key' not in status.stdout


def test_production_refuses_an_archive_staging_did_not_run(first_release, deploys, servers):
    """A release built elsewhere, put where the staging run's artifact would be."""
    deploys.project.commit('A release staging has not seen', {'NOTES.txt': 'unseen\n'})
    sha = deploys.head()
    name = deploys.project.build()
    folder = deploys.artifacts / f'release-{sha}'
    folder.mkdir()
    shutil.copy(deploys.project.folder / 'deploy' / 'build' / f'{name}.tar.gz', folder)
    replay = deploys.replay('production', sha).run()
    label, code, output = replay.result('Deploy to production the release staging ran')
    assert code != 0
    assert f'staging has not run {name}; deploy it there first' in output
    assert replay.result('Check /health over HTTPS').code is None  # skipped
    assert replay.result('Remove the ssh key').code == 0
    assert current(servers['production'], 'production') == first_release[0]


def test_production_stops_when_staging_has_not_run_the_commit(first_release, deploys, servers):
    deploys.project.commit('Another commit, never on staging', {'NOTES.txt': 'never\n'})
    replay = deploys.replay('production').run()
    assert replay.result('Find the release staging ran of this commit').code != 0
    assert replay.result('Deploy to production the release staging ran').code is None
    assert current(servers['production'], 'production') == first_release[0]


def test_a_release_failing_its_health_check_leaves_production_as_it_was(
    first_release, deploys, servers
):
    before = current(servers['production'], 'production')
    health = deploys.project.folder / 'app' / 'health.py'
    text = health.read_text()
    broken = text.replace('from flask import Blueprint', 'from flask import Blueprint, request')
    broken = broken.replace(
        "    return {'status': 'ok'}",
        f"    if request.host == '{DOMAINS['production']}':  # broken in production alone\n"
        "        return {'status': 'broken'}, 503\n"
        "    return {'status': 'ok'}",
    )
    assert broken.count('request.host') == 1
    deploys.project.commit('A release that fails in production alone', {'app/health.py': broken})
    sha = deploys.head()
    staging = deploys.replay('staging').run()
    assert staging.passed, staging.output
    (archive,) = deploys.archives(sha)
    name = release_name(archive)
    assert current(servers['staging'], 'staging') == name
    production = deploys.replay('production').run()
    label, code, output = production.result('Deploy to production the release staging ran')
    assert code != 0
    assert (
        f'{name} did not start or failed its health check; production runs {before} again'
    ) in output
    assert production.result('Check /health over HTTPS').code is None
    assert not production.passed
    assert current(servers['production'], 'production') == before
    answer = ssh(
        servers['production'],
        'curl -s --unix-socket /run/app-deploy/production.sock'
        f" -H 'Host: {DOMAINS['production']}' -H 'X-Forwarded-Proto: https'"
        ' http://localhost/health',
    )
    assert answer == '{"status":"ok"}'
    deploys.project.commit('The health check fixed', {'app/health.py': text})


def test_two_deploys_started_together_never_interleave(first_release, deploys, servers):
    host = servers['staging']
    replays = []
    for number in (1, 2):
        deploys.project.commit(f'Release {number}', {'NOTES.txt': f'{number}\n'})
        replay = deploys.replay('staging')
        replays.append(replay.run(until='Deploy to staging'))
        assert replay.passed, replay.output
        time.sleep(1)  # build.py names a release by the second
    first, second = replays
    step = first.job['steps'][first.position]
    assert step['name'] == 'Deploy to staging'
    running = first.start(step)
    try:
        wait_for_the_lock(host, running)
        second.run()
    finally:
        first.step(step, running)
        first.run()
    assert first.passed, first.output
    label, code, output = second.result('Deploy to staging')
    assert code != 0
    assert LOCK_MESSAGE in output
    assert second.result('actions/upload-artifact').code is None  # nothing for production
    names = [release_name(path.name) for path in (first.workspace / 'deploy' / 'build').iterdir()]
    assert current(host, 'staging') == names[-1]
    assert ssh(host, 'ls -A /srv/app-deploy/staging/uploads') == ''


def test_cis_key_deploys_but_gives_no_root_shell(first_release, deploys, servers):
    for env, host in servers.items():
        as_root = dataclasses.replace(host, key=deploys.key_file)
        assert as_root.ssh('true', check=False).returncode != 0, env  # not let in as root
        deploy = dataclasses.replace(as_root, user='deploy')
        assert deploy.ssh('sudo -n true', check=False).returncode != 0, env
        assert deploy.ssh('sudo -n -i', check=False).returncode != 0, env
        assert sudo_allows(deploy) == [('root', 'NOPASSWD: /usr/local/sbin/app-deploy-release')]
        read = deploy.ssh(f'cat /etc/app-deploy/{env}.env', check=False)
        assert read.returncode != 0 and 'Permission denied' in read.stderr


def test_stage_07_is_stage_06_and_the_automation():
    """Part 7 changes no line of the app or of its deploy: the diff is the automation."""
    stage_06 = STAGES['06']
    assert changed_files(stage_06, STAGE) == {
        '.github/workflows/ci.yml',
        '.github/workflows/deploy.yml',
        '.gitignore',
        'README.md',
        'environment.yml',
        'requirements-dev.txt',
        'ruff.toml',
    }
