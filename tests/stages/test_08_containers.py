"""Stage 08: the app as an image, built and run with Podman, as its README says.

The image is built from a copy of the stage by the README's own command, on a stand-in
for the official Python image (stage 06's Debian 13 root filesystem, imported under the
Dockerfile's default base name: registries are unreachable here), and run against a
stand-in for the official postgres image (tools/standin-postgres/, under compose.yaml's
name for it); then the README's compose commands bring the stack up, down, up again and
down with its volume. Every image, container, volume and network is removed at the end,
with what Podman's networking left on the machine (tools/containers.py). podman-compose
and hadolint come from the stage's requirements-dev.txt (the session's environment).
"""

import json
import os
import re
import shutil
import subprocess
import time

import pytest
import urllib3

from tests.helpers.machine import skip_without
from tests.helpers.markdown import readme_blocks
from tests.helpers.reader import PooledSite
from tests.helpers.workflows import load
from tools import containers
from tools.processes import free_port
from tools.stagediff import changed_files
from tools.stages import STAGES

pytestmark = pytest.mark.stages('08')

HOST = 'localhost'  # the first of TRUSTED_HOSTS, compose's default
NAMES = ['Foobar', 'Mark', 'Joanna']
SECRET_KEY = 'k' * 16 + os.urandom(16).hex()  # 48 bytes, searched for in the image
PASSWORD = 'pw' + os.urandom(8).hex()
IMAGE = 'localhost/app-deploy:latest'  # what `-t app-deploy` names, with Podman
PROJECT = 'app-deploy'  # compose.yaml's name:
SECTION = '## Run it in containers'
# The README's container commands, each run here as written (in a copy of the stage, with
# the run's containers.conf and APP_PORT in the environment).
BUILD = 'podman build --format docker -t app-deploy .'
# The README's secrets for compose: a folder of files that the containers read.
SECRETS = [
    'mkdir -m 700 secrets',
    'python3 -c "import secrets; print(secrets.token_hex(32))" > secrets/secret_key',
    'python3 -c "import secrets; print(secrets.token_hex(32))" > secrets/postgres_password',
    'echo "postgresql://app_deploy:$(cat secrets/postgres_password)@db:5432/app_deploy"'
    ' > secrets/database_url',
    'chmod 644 secrets/*',
]
RUNS = [
    BUILD,
    *SECRETS,
    'podman-compose up -d',
    'podman-compose down',
    'podman-compose down -v',
]
# Not run here: Docker is not on this machine (Podman runs the same Dockerfile and
# compose.yaml), and no registry is reachable to push to.
NOT_RUN = [
    'docker build -t app-deploy .',
    'docker compose up -d',
    'docker compose down',
    'docker compose down -v',
    'docker tag app-deploy ghcr.io/<you>/app-deploy:1.0.0',
    'docker login ghcr.io',
    'docker push ghcr.io/<you>/app-deploy:1.0.0',
]


def section_commands(stage_dir):
    readme = (stage_dir / 'README.md').read_text()
    section = readme.split(SECTION)[1].split('\n## ')[0]
    return [
        line
        for block in re.findall(r'```console\n(.*?)```', section, re.S)
        for line in block.splitlines()
        if line.strip()
    ]


@pytest.fixture(scope='module')
def engine(tmp_path_factory, stage_bin):
    """Podman for the module's images, containers, volumes and networks, all removed at
    the end (tools/containers.py)."""
    skip_without(containers.check_machine, containers.ContainersError, path=str(stage_bin))
    with containers.Podman(tmp_path_factory.mktemp('podman'), path=str(stage_bin)) as made:
        yield made
        for step, took in made.timings.items():
            print(f'{step}: {took:.1f} s')
    print('left on the host, not made by the run:', made.left)


@pytest.fixture(scope='module')
def copy(stage_dir, tmp_path_factory):
    """The stage, copied as a reader has it: the build context and compose's folder."""
    folder = tmp_path_factory.mktemp('stage') / 'app-deploy'
    shutil.copytree(
        stage_dir,
        folder,
        ignore=shutil.ignore_patterns(
            '__pycache__', '.venv', '.env', '.pytest_cache', '.ruff_cache', 'build'
        ),
    )
    return folder


@pytest.fixture(scope='module')
def base(engine, copy):
    """The Dockerfile's default base, a stand-in made here under its name."""
    default = re.search(r'^ARG BASE_IMAGE=(\S+)$', (copy / 'Dockerfile').read_text(), re.M)
    return engine.standin_python(default[1])


@pytest.fixture(scope='module')
def postgres_image(engine, base, copy):
    """The stand-in, under the name compose.yaml gives, so no pull is tried."""
    name = re.search(r'image: (\S*postgres\S*)', (copy / 'compose.yaml').read_text())[1]
    return engine.standin_postgres(name, base)


@pytest.fixture(scope='module')
def image(engine, base, copy):
    """The image, built by the README's command."""
    if engine.exists('image', IMAGE):
        pytest.fail(f'{IMAGE} is there already, not made by the tests: remove it first')
    engine.made_image(IMAGE)
    started = time.monotonic()
    engine.shell(BUILD, copy)
    engine.timings['app build, cold'] = time.monotonic() - started
    base_size, size = engine.size(base), engine.size(IMAGE)
    print(f'image size: {size / 1e6:.1f} MB, of which the app: {(size - base_size) / 1e6:.1f} MB')
    return IMAGE


def site_at(port):
    """The app over HTTP on a loopback port, with the Host it trusts."""
    pool = urllib3.HTTPConnectionPool(
        '127.0.0.1', port, timeout=urllib3.Timeout(connect=5, read=20), retries=False
    )
    return PooledSite(pool, HOST)


@pytest.fixture(scope='module')
def stack(engine, image, postgres_image):
    """The image on a network of its own with PostgreSQL, migrated, on a loopback port."""
    network = engine.network('net')
    db = engine.run(
        'db',
        postgres_image,
        *('--network', network, '--network-alias', 'db'),
        *('-e', 'POSTGRES_USER=app', '-e', 'POSTGRES_DB=app'),
        *('-e', f'POSTGRES_PASSWORD={PASSWORD}'),
    )
    env = [
        *('-e', 'FLASK_CONFIG=production', '-e', f'SECRET_KEY={SECRET_KEY}'),
        *('-e', f'TRUSTED_HOSTS={HOST}'),
        *('-e', f'PRODUCTION_DATABASE_URL=postgresql://app:{PASSWORD}@db:5432/app'),
    ]
    deadline = time.monotonic() + 60
    ready = ('exec', db, 'pg_isready', '-U', 'app', '-d', 'app')
    while engine.podman(*ready, check=False).returncode:
        assert time.monotonic() < deadline, engine.podman('logs', db).stderr
        time.sleep(0.5)
    engine.podman('run', '--rm', '--network', network, *env, image, 'flask', 'db', 'upgrade')
    port = free_port()
    # --read-only as Docker has it: podman would add a tmpfs on /tmp by itself.
    read_only = ['--read-only', '--read-only-tmpfs=false', '--tmpfs', '/tmp']
    web = engine.run(
        'web', image, '--network', network, '-p', f'127.0.0.1:{port}:8000', *read_only, *env
    )
    site = site_at(port)
    site.wait(seconds=90)
    return {'db': db, 'web': web, 'site': site}


# --- The README, the stage and its workflow ------------------------------------------


def test_the_readme_commands_are_those_run_here(stage_dir):
    assert sorted(section_commands(stage_dir)) == sorted(RUNS + NOT_RUN)
    # Each Podman command is a Docker one, and the reverse.
    docker = [line for line in NOT_RUN if line.startswith('docker') and 'ghcr.io' not in line]
    assert len(docker) == len(RUNS) - len(SECRETS)  # the secrets are the same for both
    assert 'docker build -t app-deploy .' in docker


def test_stage_08_is_stage_07_and_the_containers(stage_dir):
    """Part 8 changes no line of the app but its settings (secrets from files, and no
    proxy to trust when none is in front), and no line of its deploy."""
    stage_07 = STAGES['07']
    assert changed_files(stage_07, stage_dir) == {
        '.dockerignore',
        '.env.example',
        '.github/workflows/ci.yml',
        '.gitignore',  # secrets/
        'Dockerfile',
        'README.md',
        'compose.yaml',
        'config.py',
        'environment.yml',
        'requirements-dev.txt',
        'tests/test_config.py',
    }


def test_ci_builds_the_image_as_the_readme_does_and_passes_the_checkers(stage_dir, copy):
    path = stage_dir / '.github' / 'workflows' / 'ci.yml'
    workflow = load(path)
    job = workflow['jobs']['image']
    assert 'permissions' not in job and workflow['permissions'] == {'contents': 'read'}
    commands = [step['run'] for step in job['steps'] if 'run' in step]
    assert commands == [
        'pip install -r requirements-dev.txt',
        'hadolint Dockerfile',
        'docker build -t app-deploy .',
        'docker image ls app-deploy',
    ]
    assert 'push' not in path.read_text().split('  image:')[1]
    # Schema, zizmor, pins and checkouts: tests/test_workflows.py, for every workflow.
    # The README's commands that check the workflows, as written, in the copy.
    (check,) = [c for c in readme_commands_all(copy) if c.startswith('check-jsonschema')]
    (audit,) = [c for c in readme_commands_all(copy) if c.startswith('zizmor')]
    for line in (check, audit):
        result = subprocess.run(line, shell=True, cwd=copy, capture_output=True, text=True)
        assert result.returncode == 0, line + result.stdout + result.stderr


def readme_commands_all(folder):
    return [
        line
        for block in readme_blocks(folder, 'console')
        for line in block.splitlines()
        if line.strip()
    ]


# --- The Dockerfile and the image -------------------------------------------------------


def test_hadolint_finds_nothing_in_the_dockerfiles(engine, copy):
    for dockerfile in [copy / 'Dockerfile', containers.STANDIN_POSTGRES / 'Dockerfile']:
        lint = engine.shell(f'hadolint {dockerfile}', copy, check=False)
        assert lint.returncode == 0, lint.stdout + lint.stderr
    # CI's step, as written, in the copy.
    assert engine.shell('hadolint Dockerfile', copy, check=False).returncode == 0


def test_the_image_builds_and_builds_again_from_its_cache(engine, image, copy):
    started = time.monotonic()
    result = engine.shell(BUILD, copy)
    engine.timings['app build, cached'] = time.monotonic() - started
    assert result.stdout.count('Using cache') >= 8, result.stdout
    assert engine.timings['app build, cached'] < engine.timings['app build, cold']
    # --format docker kept the HEALTHCHECK (Podman's OCI format would drop it).
    check = engine.podman('image', 'inspect', '--format', '{{json .HealthCheck}}', image)
    assert json.loads(check.stdout)['Test'][0] == 'CMD', check.stdout


def test_the_container_runs_as_a_user_that_is_not_root(engine, image, stack):
    assert engine.inspect(image)['Config']['User'] == '10001:10001'
    assert engine.podman('exec', stack['web'], 'id', '-u').stdout.strip() == '10001'
    # gunicorn is PID 1, as the user: the exec form, no shell in between.
    ps = engine.podman('top', stack['web'], 'pid', 'user', 'args').stdout
    assert re.search(r'^\s*1\s+\S+\s+/venv/bin/python3? /venv/bin/gunicorn', ps, re.M), ps
    assert not re.search(r'^\s*\d+\s+root\s', ps, re.M), ps


def test_the_page_and_a_post_work_against_postgresql(stack):
    site = stack['site']
    for name in NAMES:
        site.add(name)
    page = site.get().data.decode()
    assert all(name in page for name in NAMES), page


def test_it_logs_to_stdout_and_stderr(engine, stack):
    stack['site'].get()
    logs = engine.podman('logs', stack['web'])
    assert '"GET / HTTP/1.1" 200' in logs.stdout  # gunicorn's access log, on stdout
    assert 'Listening at: http://0.0.0.0:8000' in logs.stderr  # its own messages


def test_the_healthcheck_is_healthy_and_unhealthy_while_the_database_is_down(engine, stack):
    assert engine.inspect(stack['web'])['Config']['Healthcheck']['Test'][0] == 'CMD'
    assert engine.podman('healthcheck', 'run', stack['web'], check=False).returncode == 0
    engine.podman('stop', '-t', '10', stack['db'])
    try:
        result = engine.podman('healthcheck', 'run', stack['web'], check=False)
        assert result.returncode == 1 and 'unhealthy' in result.stdout, result
    finally:
        engine.podman('start', stack['db'])
    deadline = time.monotonic() + 60
    while engine.podman('healthcheck', 'run', stack['web'], check=False).returncode:
        assert time.monotonic() < deadline, 'not healthy again after the database came back'
        time.sleep(1)


def test_the_root_filesystem_is_read_only(engine, stack):
    assert engine.inspect(stack['web'])['HostConfig']['ReadonlyRootfs'] is True
    for path in ['/app/x', '/venv/x', '/x']:
        assert engine.podman('exec', stack['web'], 'touch', path, check=False).returncode
    assert stack['site'].get('/health').status == 200


def test_nothing_secret_and_no_build_tools_in_the_image(engine, image, stack):
    history = engine.podman('history', '--no-trunc', image).stdout
    inspected = engine.podman('image', 'inspect', image).stdout
    for text in [history, inspected]:
        assert SECRET_KEY not in text and PASSWORD not in text
        assert not re.search(r'(SECRET_KEY|PASSWORD|DATABASE_URL)=', text), text
    tools = (
        'for t in gcc cc make g++; do command -v $t; done; ls -d /root/.cache /tmp/* 2>&1; true'
    )
    found = engine.podman('run', '--rm', '--user', '0', image, 'sh', '-c', tools).stdout
    assert '/bin/' not in found, found  # no compiler, no make
    assert 'No such file' in found and 'requirements' not in found, found  # no pip cache
    pip = engine.podman('run', '--rm', image, 'python', '-m', 'pip', '--version', check=False)
    assert pip.returncode and 'No module named pip' in pip.stderr, pip  # not in the venv
    files = engine.podman('run', '--rm', image, 'sh', '-c', 'du -s /venv; ls -A /app').stdout
    print('the venv:', files.split()[0], 'KiB')
    assert sorted(files.split()[2:]) == [
        'app',
        'config.py',
        'gunicorn.conf.py',
        'migrations',
        'wsgi.py',
    ]  # no tests, no .env, no requirements, no deploy/


def test_sigterm_stops_it_in_under_10_s_with_exit_code_0(engine, stack):
    started = time.monotonic()
    engine.podman('stop', '-t', '10', stack['web'])
    took = time.monotonic() - started
    print(f'stop after SIGTERM: {took:.1f} s')
    state = engine.inspect(stack['web'])['State']
    assert state['ExitCode'] == 0, state
    assert took < 10
    assert 'Handling signal: term' in engine.podman('logs', stack['web']).stderr


# --- compose.yaml, by the README's commands -----------------------------------------------


def test_compose_brings_the_stack_up_keeps_the_names_and_removes_it_all(
    engine, copy, image, postgres_image
):
    for kind in ('ps -a --format {{.Names}}', 'volume ls -q', 'network ls -q'):
        taken = [
            n for n in engine.podman(*kind.split()).stdout.split() if n.startswith(f'{PROJECT}_')
        ]
        assert not taken, f'compose project {PROJECT} is there already, not made by the tests'
    for line in SECRETS:
        engine.shell(line, copy)
    secrets = [
        (copy / 'secrets' / name).read_text().strip()
        for name in ('secret_key', 'postgres_password')
    ]
    port = free_port()
    env = {'APP_PORT': str(port)}
    engine.compose_project(PROJECT, copy, env)
    started = time.monotonic()
    up = engine.shell('podman-compose up -d', copy, env=env)
    assert 'pull' not in up.stdout.lower() + up.stderr.lower().replace('podman_compose', '')
    site = site_at(port)
    site.wait(seconds=90)
    print(f'compose up -d to /health 200: {time.monotonic() - started:.1f} s')
    check_the_containers(engine, image, secrets, site)
    ports = engine.podman('port', f'{PROJECT}_web_1').stdout
    assert ports.strip() == f'8000/tcp -> 127.0.0.1:{port}', ports
    site.add('Compose')
    started = time.monotonic()
    engine.shell('podman-compose down', copy, env=env)
    assert not engine.podman('ps', '-a', '-q', '--filter', f'name={PROJECT}_').stdout.strip()
    assert f'{PROJECT}_db-data' in engine.podman('volume', 'ls', '-q').stdout
    engine.shell('podman-compose up -d', copy, env=env)
    site.wait(seconds=90)
    assert 'Compose' in site.get().data.decode()
    engine.shell('podman-compose down -v', copy, env=env)
    print(f'compose down, up -d, down -v: {time.monotonic() - started:.1f} s')
    assert not engine.podman('ps', '-a', '-q', '--filter', f'name={PROJECT}_').stdout.strip()
    assert f'{PROJECT}_' not in engine.podman('volume', 'ls', '-q').stdout
    assert f'{PROJECT}_' not in engine.podman('network', 'ls', '-q').stdout


def check_the_containers(engine, image, secrets, site):
    """The stack compose made: the README's image, read-only, and no secret, privilege or
    capability more than it needs."""
    web = engine.inspect(f'{PROJECT}_web_1')
    assert web['Image'] == engine.inspect(image)['Id']  # the image the README built
    # podman-compose runs podman with the run's containers.conf (CONTAINERS_CONF).
    assert web['OCIRuntime'] == 'runc', web['OCIRuntime']
    assert {'Name': 'RLIMIT_NOFILE', 'Soft': 1024, 'Hard': 1024} in web['HostConfig']['Ulimits']
    assert web['HostConfig']['ReadonlyRootfs'] is True
    # The secrets are files in /run/secrets, in no container's environment; no container
    # may gain privileges, and the app has no capability at all.
    # Read /proc/1 as the user PID 1 runs as: the image's, and postgres in the database's.
    for service, user in (('web', []), ('db', ['-u', 'postgres'])):
        container = f'{PROJECT}_{service}_1'
        seen = json.dumps(engine.inspect(container)['Config']['Env'])
        seen += engine.podman('exec', *user, container, 'cat', '/proc/1/environ').stdout
        assert not any(secret in seen for secret in secrets), service
        status = engine.podman('exec', *user, container, 'cat', '/proc/1/status').stdout
        assert re.search(r'^NoNewPrivs:\s+1$', status, re.MULTILINE), service
        if service == 'web':
            assert re.search(r'^CapEff:\s+0+$', status, re.MULTILINE), status
    # Nothing is in front: a client's X-Forwarded-Host is not believed (with it believed,
    # evil.example would be the host, and not one the app serves: 400).
    forwarded = site.pool.request(
        'GET', '/', headers={'Host': HOST, 'X-Forwarded-Host': 'evil.example'}
    )
    assert forwarded.status == 200, forwarded.status
