"""Stage 06 end to end: provision two stand-in servers and deploy to them with pyinfra.

Two Debian 13 servers boot with systemd (tools/standin/): staging and production.
The tests run the stage's commands as a reader does, from a git copy of the stage:
`python3 build.py`, then `pyinfra inventory.py provision.py|release.py|rollback.py` in
deploy/. They share the servers, in the order below: provisioning, the first deploys,
a release with a migration under load, the faults, and what must hold at the end.
They need root, systemd-nspawn and the rest (tools/standin/); about 3 minutes.
"""

import concurrent.futures
import dataclasses
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
import urllib3

from tests.helpers.deploy import (
    DOMAINS,
    FINGERPRINTS,
    KEYSCAN,
    PIN,
    Project,
    authorize,
    current,
    keep_provisioned,
    load_on,
    new_key,
    provisioned_images,
    site,
    ssh,
    sudo_allows,
    unauthorize,
    wait_for_the_lock,
)
from tests.helpers.scanners import sslyze_failures
from tools import standin, support
from tools.stagediff import changed_files
from tools.stages import STAGES

pytestmark = pytest.mark.stages('06')

RUNS = [
    'pip install -r deploy/requirements.txt',  # the nox session, from requirements-dev.txt
    'cd deploy',  # Project.run
    'export STAGING_HOST=staging.example.com',  # a stand-in's address, in Project.env
    'export PRODUCTION_HOST=example.com',
    KEYSCAN,
    FINGERPRINTS,
    PIN,
    'pyinfra inventory.py provision.py',
    'python3 build.py',
    'pyinfra inventory.py release.py --limit staging',
    'pyinfra inventory.py release.py --limit production',
    'pyinfra inventory.py rollback.py --limit production',
]
# certbot needs a domain that Let's Encrypt can reach; the stand-ins have none.
NOT_RUN = [
    'sudo apt install certbot',
    'sudo certbot certonly --webroot -w /var/www/letsencrypt -d example.com'
    ' --deploy-hook "systemctl reload nginx"',
]
NAMES = ['Foobar', 'Mark', 'Joanna']
# A release with a migration that the running release can live with: a new column,
# nullable, that it does not know about.
MIGRATION = '''"""A note for each name (test release)"""
import sqlalchemy as sa
from alembic import op

revision = 'a1b2c3d4e5f6'
down_revision = '948a6eac32b5'


def upgrade():
    op.add_column('names', sa.Column('note', sa.Text(), nullable=True))


def downgrade():
    op.drop_column('names', 'note')
'''
FAILING_MIGRATION = MIGRATION.replace(
    "op.add_column('names', sa.Column('note', sa.Text(), nullable=True))",
    "op.execute('SELECT 1/0')",
)


@pytest.fixture(scope='module')
def project(stage_dir, stage_bin, servers, tmp_path_factory):
    return Project(stage_dir, tmp_path_factory.mktemp('project') / 'app', stage_bin, servers)


@pytest.fixture(scope='module')
def provisioned(project, stage_dir, servers):
    """Both servers provisioned; the outputs of the first and the second run. The servers
    are then kept as images, for the tests of later stages that start provisioned."""
    started = time.monotonic()
    first = project.pyinfra('provision.py')
    started = timed('provision, first run', started)
    second = project.pyinfra('provision.py')
    started = timed('provision, second run', started)
    keep_provisioned(servers, provisioned_images(stage_dir))
    return first.stdout, second.stdout


@pytest.fixture(scope='module')
def sites(provisioned, servers, tmp_path_factory):
    folder = tmp_path_factory.mktemp('certificates')
    made = {}
    for env, host in servers.items():
        (folder / env).write_text(ssh(host, 'cat /etc/app-deploy/tls/fullchain.pem') + '\n')
        made[env] = site(host, env, folder / env)
    return made


@pytest.fixture(scope='module')
def first_release(project, sites):
    """The stage deployed to staging, then production; names typed into production."""
    started = time.monotonic()
    name = project.build()
    started = timed('build', started)
    project.pyinfra('release.py', 'staging')
    started = timed('first deploy to staging', started)
    project.pyinfra('release.py', 'production')
    started = timed('first deploy to production', started)
    for typed in NAMES:
        sites['production'].add(typed)
    return name


def timed(step, started):
    """Say how long ``step`` took (pytest -s shows it); restart the clock."""
    print(f'{step}: {time.monotonic() - started:.1f} s')
    return time.monotonic()


def results(output):
    """pyinfra's results table's last row: (success, error, no change) of all hosts."""
    row = re.search(r'Grand total\s+\d+\s+(\S+)\s+(\S+)\s+(\S+)', output)
    return tuple(0 if cell == '-' else int(cell) for cell in row.groups())


def test_the_readme_commands_are_those_run_here(stage_dir):
    readme = (stage_dir / 'README.md').read_text()
    section = readme.split('## Deploy it')[1].split('\n## ')[0]
    commands = [
        line
        for block in re.findall(r'```console\n(.*?)```', section, re.S)
        for line in block.splitlines()
    ]
    assert sorted(commands) == sorted(RUNS + NOT_RUN)
    for command in RUNS:  # the pyinfra ones, as Project.pyinfra makes them
        if command.startswith('pyinfra '):
            deploy, _, env = command.removeprefix('pyinfra inventory.py ').partition(' --limit ')
            assert Project.pyinfra_command(deploy, env or None)[:-3] == command.split()


# --- Provisioning ----------------------------------------------------------------------


def test_provisioning_a_second_time_changes_nothing(provisioned):
    first, second = provisioned
    assert results(first)[0] > 0
    assert results(second)[:2] == (0, 0), second


def test_the_servers_run_the_debian_and_postgresql_of_support_toml(provisioned, servers):
    platform = support.pieces()
    debian, postgresql = platform['debian']['version'], platform['postgresql']['version']
    for host in servers.values():
        release = ssh(host, '. /etc/os-release && echo "$VERSION_ID $VERSION_CODENAME"')
        assert release == f'13 {debian}'
        assert re.fullmatch(
            rf'psql \(PostgreSQL\) {postgresql}\.\d+\b.*', ssh(host, 'psql --version')
        )


def test_the_secrets_are_made_on_the_server_for_root_alone(provisioned, servers):
    for env, host in servers.items():
        owner = ssh(host, f'stat -c "%U %a" /etc/app-deploy /etc/app-deploy/{env}.env')
        assert owner == 'root 700\nroot 600'
        # The app cannot read them, nor so rewrite them; systemd hands them to it.
        read = host.ssh(f'runuser -u app-deploy -- cat /etc/app-deploy/{env}.env', check=False)
        assert read.returncode != 0 and 'Permission denied' in read.stderr
        settings = dict(
            line.split('=', 1) for line in ssh(host, f'cat /etc/app-deploy/{env}.env').splitlines()
        )
        assert len(settings['SECRET_KEY']) == 64
        assert settings['TRUSTED_HOSTS'] == DOMAINS[env]
        # The password works, over TCP, for the role that owns the database.
        url = settings[f'{env.upper()}_DATABASE_URL']
        assert ssh(host, f"psql '{url}' -tAc 'SELECT current_user'") == f'app_deploy_{env}'
    staging = ssh(servers['staging'], 'cat /etc/app-deploy/staging.env')
    assert staging != ssh(servers['production'], 'cat /etc/app-deploy/production.env')


def test_the_firewall_lets_in_ssh_http_and_https_alone(provisioned, servers):
    host = servers['production']
    ssh(host, 'systemd-run --unit=probe -p RuntimeMaxSec=60 python3 -m http.server 8081')
    try:
        ssh(host, 'until ss -ltn | grep -q :8081; do sleep 0.1; done', timeout=10)
        for port, reachable in ((22, True), (80, True), (443, True), (8081, False)):
            try:
                socket.create_connection((host.address, port), timeout=2).close()
                answered = True
            except OSError:
                answered = False
            assert answered == reachable, f'port {port}'
    finally:
        ssh(host, 'systemctl stop probe', check=False)


def test_new_ssh_connections_are_rate_limited_per_address(provisioned, servers):
    """A flood of new connections from this machine is cut after the burst; the ssh
    connection already open (Host.ssh keeps one) and the site carry on. And sshd itself
    then refuses the address whose connections all closed before logging in."""
    host = servers['production']
    ssh(host, 'nft flush set inet filter ssh_ipv4')  # the run's own earlier connections
    opened, started = 0, time.monotonic()
    for _ in range(80):
        try:
            socket.create_connection((host.address, 22), timeout=1).close()
        except OSError:
            break
        opened += 1
    refilled = int((time.monotonic() - started) / 2)  # 30 a minute: one more every 2 s
    try:
        assert 60 <= opened <= 60 + refilled, (opened, refilled)  # the burst, then the rate
        socket.create_connection((host.address, 443), timeout=2).close()
        counted = ssh(host, 'nft list chain inet filter input | grep counter')
        assert int(re.search(r'dport 22 counter packets (\d+)', counted)[1]) >= 1, counted
    finally:
        ssh(host, 'nft flush set inet filter ssh_ipv4')  # this machine may connect again
    try:
        # OpenSSH 9.8 on (Debian 13 has 10.0): each connection that closed before logging
        # in adds a second to the address's penalty (PerSourcePenalties noauth:1), and
        # from 15 s on sshd turns its new connections away (the command Part 6 shows).
        terms = ssh(host, 'sshd -T | grep persourcepenalties')
        assert 'noauth:1' in terms and 'min:15' in terms, terms
        assert ssh_banner(host.address) == b'Not allowed at this time\r\n'
    finally:
        ssh(host, 'systemctl restart ssh')  # forgets penalties; sessions stay (KillMode=process)
    assert ssh_banner(host.address).startswith(b'SSH-2.0-OpenSSH_10.')


def ssh_banner(address):
    """The first line sshd says to a new connection: its version, or why it will not talk."""
    with socket.create_connection((address, 22), timeout=5) as sock:
        return sock.recv(64)


@pytest.mark.parametrize('env', DOMAINS)
def test_tls_is_mozilla_intermediate_for_the_site_and_shut_to_others(provisioned, servers, env):
    address, domain = servers[env].address, DOMAINS[env]
    failures = sslyze_failures(f'{domain}:443{{{address}}}')  # names the site, as browsers do
    assert list(failures) == ['certificate_path_validation'], failures  # self-signed
    with pytest.raises(RuntimeError, match='unrecognized name'):
        sslyze_failures(f'{address}:443')  # a scanner trying addresses: no handshake


def negotiated(address, domain, protocols):
    """The protocol the site picks from those a client offers in its TLS handshake (ALPN)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # self-signed
    context.set_alpn_protocols(protocols)
    with socket.create_connection((address, 443), timeout=30) as sock:
        with context.wrap_socket(sock, server_hostname=domain) as tls:
            return tls.selected_alpn_protocol()


@pytest.mark.parametrize('env', DOMAINS)
def test_a_browser_that_offers_http2_gets_it_and_one_that_does_not_gets_http11(
    provisioned, servers, env
):
    address, domain = servers[env].address, DOMAINS[env]
    assert negotiated(address, domain, ['h2', 'http/1.1']) == 'h2'  # `http2 on;`, nginx 1.26
    assert negotiated(address, domain, ['http/1.1']) == 'http/1.1'


def test_http_sends_browsers_to_https_but_answers_certbot(provisioned, servers):
    host, domain = servers['production'], DOMAINS['production']
    challenge = '/.well-known/acme-challenge/test-token'
    ssh(host, f'install -D -m 644 /dev/null /var/www/letsencrypt{challenge}')
    ssh(host, f'echo proof > /var/www/letsencrypt{challenge}')
    try:
        plain = urllib3.HTTPConnectionPool(host.address, 80, retries=False, timeout=5)
        answer = plain.request('GET', challenge, headers={'Host': domain})
        assert (answer.status, answer.data) == (200, b'proof\n')
        answer = plain.request('GET', '/?page=2', headers={'Host': domain}, redirect=False)
        assert answer.status == 308
        assert answer.headers['Location'] == f'https://{domain}/?page=2'
    finally:
        ssh(host, 'rm -r /var/www/letsencrypt/.well-known')


def test_a_certificate_from_certbot_is_served_and_left_alone(project, provisioned, servers):
    host, domain = servers['production'], DOMAINS['production']
    live = f'/etc/letsencrypt/live/{domain}'
    # As certbot leaves it: the files in archive/, symbolic links to them in live/.
    ssh(
        host,
        f'set -e; mkdir -p /etc/letsencrypt/archive/{domain} {live}; cd /etc/letsencrypt;'
        ' openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2'
        f' -subj /CN=certbot -keyout archive/{domain}/privkey1.pem'
        f' -out archive/{domain}/fullchain1.pem 2>/dev/null;'
        f' ln -s ../../archive/{domain}/privkey1.pem {live}/privkey.pem;'
        f' ln -s ../../archive/{domain}/fullchain1.pem {live}/fullchain.pem',
    )
    before = ssh(host, f'sha256sum /etc/letsencrypt/archive/{domain}/*')
    project.env['PRODUCTION_CERTIFICATE'] = live
    try:
        project.pyinfra('provision.py', 'production')
        served = ssh(
            host,
            f'openssl s_client -connect 127.0.0.1:443 -servername {domain} </dev/null'
            ' 2>/dev/null | openssl x509 -noout -subject -nameopt RFC2253',
        )
        assert served == 'subject=CN=certbot'
        assert ssh(host, f'sha256sum /etc/letsencrypt/archive/{domain}/*') == before
    finally:
        del project.env['PRODUCTION_CERTIFICATE']
        project.pyinfra('provision.py', 'production')  # back to the self-signed one
        ssh(host, 'rm -r /etc/letsencrypt')


# --- Deploying -------------------------------------------------------------------------


def test_staging_then_production_run_the_release(first_release, servers, sites):
    for env, host in servers.items():
        assert current(host, env) == first_release
        assert sites[env].get('/health').json() == {'status': 'ok'}
    assert sites['production'].names() == NAMES[::-1]
    assert sites['staging'].names() == []  # a database of its own


def test_the_app_runs_as_its_own_user_behind_the_socket(first_release, servers):
    host = servers['production']
    main = ssh(host, 'systemctl show -p MainPID --value app-deploy@production')
    users = ssh(host, f'ps -o user= --pid {main} --ppid {main}').split()
    assert set(users) == {'app-deploy'} and len(users) > 1
    assert ssh(host, 'stat -c "%U %G %a" /run/app-deploy/production.sock') == 'root www-data 660'
    # The units as systemd reads them: no warning, and stage 05's sandbox.
    verify = host.ssh(
        'systemd-analyze verify app-deploy@production.service app-deploy@production.socket'
    )
    assert verify.stdout + verify.stderr == ''
    security = ssh(host, 'systemd-analyze security app-deploy@production.service')
    assert float(re.search(r'Overall exposure level .*: ([\d.]+)', security)[1]) < 2


def test_production_takes_only_what_staging_ran(project, first_release, servers):
    name = project.build('A release staging has not seen', {'NOTES.txt': 'new\n'})
    result = project.pyinfra('release.py', 'production', '--data', f'release={name}', check=False)
    assert result.returncode != 0
    assert f'staging has not run {name}; deploy it there first' in result.stdout
    assert current(servers['production'], 'production') == first_release


def test_ssh_takes_keys_alone_and_gives_deploy_one_command_as_root(
    project, first_release, servers, tmp_path
):
    """The stand-ins start as a provider's image does, with passwords and root allowed
    in (tools/standin/); provisioning leaves keys alone, and a key of deploy's,
    such as CI's, may deploy and nothing else as root."""
    host = servers['staging']
    keyless = [*host.ssh_command[:-1], '-o', 'BatchMode=yes', '-o', 'PubkeyAuthentication=no']
    offered = subprocess.run(
        [*keyless, host.ssh_command[-1], 'true'], capture_output=True, text=True, timeout=60
    )
    assert 'Permission denied (publickey).' in offered.stderr, offered.stderr  # no password
    settings = ssh(host, 'sshd -T').splitlines()
    for line in ('passwordauthentication no', 'permitrootlogin without-password'):
        assert line in settings
    key = tmp_path / 'deploy_key'
    public = new_key(key)
    authorize(host, public)
    deploy = dataclasses.replace(host, user='deploy', key=key)
    try:
        assert deploy.ssh('id -un').stdout.strip() == 'deploy'
        assert dataclasses.replace(host, key=key).ssh('true', check=False).returncode != 0
        assert deploy.ssh('sudo -n true', check=False).returncode != 0
        assert sudo_allows(deploy) == [('root', 'NOPASSWD: /usr/local/sbin/app-deploy-release')]
        # app-deploy-release trusts none of its arguments: none of these touches a file.
        for arguments in ('install staging current', 'install staging ../../../etc/passwd'):
            run = deploy.ssh(
                f'sudo -n /usr/local/sbin/app-deploy-release {arguments}', check=False
            )
            assert run.returncode != 0 and "not an upload's name" in run.stderr, run.stderr
        assert current(host, 'staging') == first_release
        assert ssh(host, 'test -s /etc/passwd && echo kept') == 'kept'
        # And it deploys, as CI does: the upload, then app-deploy-release through sudo.
        command = Project.pyinfra_command('release.py', 'staging', key)
        project.run(*command, '--user', 'deploy', '--data', f'release={first_release}')
        assert current(host, 'staging') == first_release  # it runs that one already
        assert ssh(host, 'ls -A /srv/app-deploy/staging/uploads') == ''
    finally:
        unauthorize(host, public)


def test_a_release_with_a_migration_drops_no_request(project, first_release, servers, sites):
    name = project.build(
        'A column for notes', {'migrations/versions/2026_11_25_a1b2c3d4e5f6_note.py': MIGRATION}
    )
    project.pyinfra('release.py', 'staging')
    assert current(servers['staging'], 'staging') == name

    site = sites['production']
    with load_on(site) as answers:
        started = time.monotonic()
        project.pyinfra('release.py', 'production')
        timed('deploy with a migration to production, under load', started)
    failed = [status for status, _ in answers if status != 200]
    print(f'{len(answers) - len(failed)} requests served, {len(failed)} failed during the deploy')
    assert failed == [] and len(answers) > 100
    assert current(servers['production'], 'production') == name
    assert site.names() == NAMES[::-1]
    columns = ssh(
        servers['production'],
        'runuser -u postgres -- psql -tAc "SELECT column_name FROM information_schema.columns'
        " WHERE table_name = 'names'\" app_deploy_production",
    )
    assert 'note' in columns.split()


def test_a_restart_finishes_a_slow_request_and_drops_none(first_release, servers, sites):
    """The restart each deploy ends with, while every request waits on a lock: the old
    gunicorn answers what it holds (graceful_timeout), the socket queues what arrives
    meanwhile for the new one. Prints the restart's length and the longest wait."""
    host = servers['production']
    held = 2.5  # seconds; under the app's lock_timeout of 3 s, so the requests are answered
    # The names table locked, as a migration's ALTER TABLE holds it.
    sql = f'BEGIN; LOCK TABLE names; SELECT pg_sleep({held}); COMMIT;'
    lock = f'runuser -u postgres -- psql -qc "{sql}" app_deploy_production'
    with load_on(sites['production']) as answers:
        with concurrent.futures.ThreadPoolExecutor() as pool:
            locked = pool.submit(ssh, host, lock)
            time.sleep(0.5)  # the lock taken, requests waiting on it in gunicorn
            started = time.monotonic()
            ssh(host, 'systemctl restart app-deploy@production.service')
            restart = time.monotonic() - started
            locked.result()  # psql took the lock and held it
    failed = [status for status, _ in answers if status != 200]
    longest = max(seconds for _, seconds in answers)
    print(
        f'restart with requests held {held} s by a lock: the restart took {restart:.1f} s,'
        f' the longest request {longest:.1f} s; {len(answers)} requests, {len(failed)} failed'
    )
    assert failed == []


# --- Faults ----------------------------------------------------------------------------


# Releases that cannot serve, each in its own way: (file, how it is broken).
UNHEALTHY = {
    'its gunicorn.conf.py raises': (
        'gunicorn.conf.py',
        lambda text: text + "raise RuntimeError('a setting that breaks gunicorn')\n",
    ),
    'it has no gunicorn': (  # its pin, with its hashes, gone from what the server installs
        'deploy/requirements-server.txt',
        lambda text: re.sub(r'^gunicorn==.*?\n(?=\S)', '', text, flags=re.MULTILINE | re.DOTALL),
    ),
    'its /health answers 503': (
        'app/health.py',
        lambda text: text.replace("'ok'}", "'ok'}, 503", 1),
    ),
}


def went_back(name, env, before):
    """The one line app-deploy-release ends with when ``name`` could not serve."""
    return (
        f'{name} did not start or failed its health check;'
        f' {env} runs {before} again (journalctl -u app-deploy@{env})'
    )


@pytest.mark.parametrize('env', DOMAINS)
@pytest.mark.parametrize('fault', UNHEALTHY)
def test_a_release_that_cannot_serve_is_rolled_back(
    project, first_release, servers, sites, fault, env
):
    host = servers[env]
    before = current(host, env)
    path, breaks = UNHEALTHY[fault]
    text = (project.folder / path).read_text()
    assert breaks(text) != text
    name = project.build(f'A release that cannot serve: {fault}', {path: breaks(text)})
    # On production, as if staging had run it: a fault of production's alone.
    passed = f'/srv/app-deploy/staging/releases/{name}'
    if env == 'production':
        ssh(servers['staging'], f'mkdir {passed} && touch {passed}/HEALTHY')
    try:
        result = project.pyinfra('release.py', env, '--data', f'release={name}', check=False)
    finally:
        if env == 'production':
            ssh(servers['staging'], f'rm -r {passed}')
        project.commit('The release fixed', {path: text})
    assert result.returncode != 0
    assert went_back(name, env, before) in result.stdout
    assert current(host, env) == before
    assert name not in ssh(host, f'ls /srv/app-deploy/{env}/releases')
    assert ssh(host, f'systemctl is-active app-deploy@{env}.socket app-deploy@{env}') == (
        'active\nactive'
    )
    assert sites[env].get('/health').status == 200  # through nginx


@pytest.mark.parametrize('env', DOMAINS)
def test_rollback_to_a_release_that_cannot_start_goes_back(
    project, first_release, servers, sites, env
):
    host = servers[env]
    before = current(host, env)
    assert before != first_release
    config = f'/srv/app-deploy/{env}/releases/{first_release}/gunicorn.conf.py'
    ssh(host, f"cp -p {config} {config}.saved && echo 'raise RuntimeError(1)' >> {config}")
    try:
        result = project.pyinfra(
            'rollback.py', env, '--data', f'release={first_release}', check=False
        )
    finally:
        ssh(host, f'mv {config}.saved {config}')
    assert result.returncode != 0
    assert went_back(first_release, env, before) in result.stdout
    assert current(host, env) == before
    assert first_release in ssh(host, f'ls /srv/app-deploy/{env}/releases')  # kept: not new
    assert sites[env].get('/health').status == 200


def test_a_failing_migration_changes_nothing(project, first_release, servers, sites):
    host = servers['staging']
    before = current(host, 'staging')
    name = project.build(
        'A migration that fails',
        {
            'migrations/versions/2026_11_25_b2c3d4e5f6a7_fails.py': FAILING_MIGRATION.replace(
                "'a1b2c3d4e5f6'\ndown_revision = '948a6eac32b5'",
                "'b2c3d4e5f6a7'\ndown_revision = 'a1b2c3d4e5f6'",
            )
        },
    )
    result = project.pyinfra('release.py', 'staging', '--data', f'release={name}', check=False)
    output = result.stdout
    assert result.returncode != 0
    assert 'the migration failed; nothing was changed' in output
    assert f'flask db upgrade failed; staging still runs {before}' in output
    assert 'Traceback' not in output
    assert current(host, 'staging') == before
    assert sites['staging'].get('/health').status == 200
    # and production will not take it
    result = project.pyinfra('release.py', 'production', '--data', f'release={name}', check=False)
    assert f'staging has not run {name}' in result.stdout
    (project.folder / 'migrations/versions/2026_11_25_b2c3d4e5f6a7_fails.py').unlink()
    project.commit('The failing migration dropped')


@pytest.mark.parametrize('fault', ['unreachable host', 'wrong key', 'unknown host key'])
def test_a_server_that_cannot_be_reached_safely_is_left_alone(
    project, first_release, servers, sites, fault, tmp_path
):
    host = servers['production']
    before = current(host, 'production')
    known_hosts = project.folder / 'deploy' / 'known_hosts'
    saved = known_hosts.read_text()
    args, expected = (
        [],
        {
            'unreachable host': 'Could not connect ([Errno None] Unable to connect to port 22',
            'wrong key': 'Authentication error (username=root',
            'unknown host key': f'No host key for {host.address} found in known_hosts',
        }[fault],
    )
    env = dict(project.env)
    try:
        if fault == 'unreachable host':
            # An address on production's network that nothing answers at.
            project.env['PRODUCTION_HOST'] = host.address.rsplit('.', 1)[0] + '.3'
        elif fault == 'wrong key':
            subprocess.run(
                ['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', tmp_path / 'other'],
                check=True,
            )
            args = ['--key', str(tmp_path / 'other')]
        else:
            known_hosts.write_text(servers['staging'].known_hosts.read_text())
        result = project.pyinfra('rollback.py', 'production', *args, check=False, timeout=120)
    finally:
        project.env = env
        known_hosts.write_text(saved)
    output = result.stdout
    assert result.returncode != 0
    assert expected in output, output
    assert 'Traceback' not in output
    assert current(host, 'production') == before
    assert sites['production'].get('/health').status == 200


def test_a_wheel_that_is_not_the_one_hashed_is_refused(project, first_release, servers, sites):
    """A release whose archive holds a changed wheel (on the way, or on the build machine)
    is refused by the server's pip, which checks each file against
    requirements-server.txt, and the site keeps its release."""
    host = servers['staging']
    before = current(host, 'staging')
    name = project.build('A release whose wheel is then changed', {'NOTES.txt': 'changed\n'})
    archive = project.folder / 'deploy' / 'build' / f'{name}.tar.gz'
    with tempfile.TemporaryDirectory() as folder:
        with tarfile.open(archive) as release:
            release.extractall(folder, filter='data')
        (wheel,) = Path(folder, 'wheels').glob('blinker-*.whl')
        with zipfile.ZipFile(wheel, 'a') as changed:
            changed.writestr('blinker/extra.py', 'print("not what was tested")\n')
        with tarfile.open(archive, 'w:gz') as release:
            release.add(folder, arcname='.')
    result = project.pyinfra('release.py', 'staging', '--data', f'release={name}', check=False)
    assert result.returncode != 0
    assert 'THESE PACKAGES DO NOT MATCH THE HASHES' in result.stdout, result.stdout
    assert f"could not install {name}'s packages" in result.stdout
    assert current(host, 'staging') == before
    assert name not in ssh(host, 'ls /srv/app-deploy/staging/releases')
    assert sites['staging'].get('/health').status == 200


# The command that makes deploy/requirements-server.txt, at its top and in Part 6.
UV_COMPILE = 'uv pip compile requirements.txt --generate-hashes --python-version 3.13 --python-platform x86_64-manylinux_2_17 -o deploy/requirements-server.txt'


def test_the_server_requirements_are_what_uv_makes_of_requirements_txt(stage_dir, tmp_path):
    """deploy/requirements-server.txt is made, not written: uv makes the same file again
    from requirements.txt, with the command at its top, so they never disagree."""
    pinned = stage_dir / 'deploy' / 'requirements-server.txt'
    assert pinned.read_text().splitlines()[1] == f'#    {UV_COMPILE}'
    shutil.copy(stage_dir / 'requirements.txt', tmp_path)
    (tmp_path / 'deploy').mkdir()
    uv = [sys.executable, '-m', 'uv', *UV_COMPILE.split()[1:], '--quiet']
    subprocess.run(uv, cwd=tmp_path, check=True, timeout=300)
    assert (tmp_path / 'deploy' / 'requirements-server.txt').read_text() == pinned.read_text()


def test_a_full_disk_stops_the_deploy(project, first_release, servers, sites):
    host = servers['production']
    before = current(host, 'production')
    name = project.build('Another release', {'NOTES.txt': 'another\n'})
    project.pyinfra('release.py', 'staging', '--data', f'release={name}')
    releases = '/srv/app-deploy/production/releases'
    # The releases folder on a tmpfs with room for what it holds, plus 10 MB.
    ssh(
        host,
        f'set -e; used=$(du -sm {releases} | cut -f1); mkdir -p /run/full;'
        f' mount -t tmpfs -o size=$((used + 10))m tmpfs /run/full;'
        f' cp -a {releases}/. /run/full/; mount --bind /run/full {releases}',
    )
    try:
        result = project.pyinfra('release.py', 'production', check=False)
    finally:
        ssh(host, f'umount {releases}; umount /run/full', check=False)
    output = result.stdout
    assert result.returncode != 0
    assert '(is the disk full? df -h /srv/app-deploy/production)' in output, output
    assert current(host, 'production') == before
    assert name not in ssh(host, f'ls {releases}')
    assert sites['production'].get('/health').status == 200


def test_a_second_deploy_started_meanwhile_stops_at_once(project, first_release, servers):
    host = servers['staging']
    first = project.build('A first release', {'NOTES.txt': 'first\n'})
    second = project.build('A second release', {'NOTES.txt': 'second\n'})
    running = project.popen_pyinfra('release.py', 'staging', '--data', f'release={first}')
    try:
        wait_for_the_lock(host, running)
        result = project.pyinfra(
            'release.py', 'staging', '--data', f'release={second}', check=False
        )
    finally:
        output, _ = running.communicate(timeout=300)
    assert running.returncode == 0, output
    assert result.returncode != 0
    assert 'another deploy to staging is running; try again when it ends' in result.stdout
    assert current(host, 'staging') == first
    assert ssh(host, 'ls -A /srv/app-deploy/staging/uploads') == ''


# --- Rollback, restarts, what is kept ------------------------------------------------


def test_rollback_by_hand(project, first_release, servers, sites):
    host = servers['production']
    newest = current(host, 'production')
    started = time.monotonic()
    project.pyinfra('rollback.py', 'production')
    timed('rollback', started)
    assert current(host, 'production') == first_release
    assert sites['production'].names() == NAMES[::-1]
    result = project.pyinfra(
        'release.py', 'production', '--data', f'release={newest}', check=False
    )
    assert f'production has {newest} already; to run it again: rollback' in result.stdout
    project.pyinfra('rollback.py', 'production', '--data', f'release={newest}')
    assert current(host, 'production') == newest


def test_systemd_restarts_a_killed_gunicorn_after_quick_rollbacks(first_release, servers, sites):
    """Six rollbacks in a row, more starts than StartLimitBurst's five a minute: they
    are asked for, so they leave systemd the restarts that a crash needs."""
    host = servers['production']
    unit = 'app-deploy@production'
    newest = current(host, 'production')
    for name in [first_release, newest] * 3:
        ssh(host, f'/usr/local/sbin/app-deploy-release rollback production {name}')
    assert current(host, 'production') == newest
    before = ssh(host, f'systemctl show -p MainPID --value {unit}')
    ssh(host, f'systemctl kill --kill-whom=main --signal=KILL {unit}')
    # Up to TimeoutStopSec (90 s) and more: on the stand-ins (systemd 257 in a container
    # on this machine's hybrid cgroups) systemd at times learns only at that timeout that
    # the killed workers are gone, and waits in stop-sigkill until then (seen in CI).
    started = time.monotonic()
    while ssh(host, f'systemctl show -p MainPID --value {unit}') in (before, '0'):
        if time.monotonic() > started + 150:
            status = ssh(host, f'systemctl status --no-pager {unit} || true')
            raise AssertionError(f'gunicorn did not come back in 150 s:\n{status}')
        time.sleep(0.2)
    timed('a killed gunicorn back', started)
    sites['production'].wait()


def test_the_app_comes_back_after_a_reboot(first_release, servers, sites):
    host = servers['production']
    started = time.monotonic()
    ssh(host, 'systemctl reboot', check=False)
    time.sleep(2)
    standin.wait_for_ssh(host)
    sites['production'].wait(seconds=90)
    timed('reboot until /health answers', started)
    assert sites['production'].names() == NAMES[::-1]


def test_the_newest_five_releases_are_kept(project, first_release, servers):
    host = servers['staging']
    for number in range(5):
        project.build(f'Release {number}', {'NOTES.txt': f'{number}\n'})
        project.pyinfra('release.py', 'staging')
    releases = ssh(host, 'ls /srv/app-deploy/staging/releases').split()
    assert len(releases) == 5
    assert current(host, 'staging') == releases[-1]


def test_nothing_secret_in_the_repository_the_output_or_the_releases(project, servers):
    for env, host in servers.items():
        settings = ssh(host, f'cat /etc/app-deploy/{env}.env').splitlines()
        secrets = [line.split('=', 1)[1] for line in settings if 'TRUSTED' not in line]
        password = re.search(r'://[^:]+:([^@]+)@', secrets[1])[1]
        for secret in (secrets[0], password):
            assert not any(secret in output for output in project.outputs)
            for path in project.folder.rglob('*'):
                assert not path.is_file() or secret.encode() not in path.read_bytes(), path
            found = host.ssh(f'grep -rlF -- {secret} /srv/app-deploy', check=False)
            assert found.returncode == 1, found.stdout


def test_stage_06_is_stage_05_and_its_deploy(stage_dir):
    """Part 6 changes no line of the app: the diff is deploy/, and what says so."""
    changed = changed_files(STAGES['05'], stage_dir)
    assert {path for path in changed if not path.startswith('deploy/')} == {
        '.gitignore',  # deploy/build/
        'README.md',
        'environment.yml',
        'gunicorn.conf.py',  # its comment: systemd now hands gunicorn the socket
        'requirements-dev.txt',  # -r deploy/requirements.txt
    }
