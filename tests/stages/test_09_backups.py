"""Stage 09 end to end: backups to a third server, restores, and a lost server rebuilt.

Three Debian 13 stand-in servers boot with systemd (tools/standin/): staging,
production, and backup, which the other two may reach on port 22 alone. The tests run
the README's commands from a git copy of the stage, as a reader does: the backup
server provisioned first, then the others, a release deployed, names typed. Then, on
production: a backup, the freshness check, a restore to a moment before names were
deleted by hand, each way a restore is refused, the backup server cut off while the
site runs, and at last the production server lost and rebuilt from the backups alone,
with the data lost (RPO) and the time the site was away (RTO) printed (pytest -s).
"""

import concurrent.futures
import json
import re
import shlex
import subprocess
import threading
import time

import pytest

from tests.helpers.deploy import (
    DOMAINS,
    FINGERPRINTS,
    PIN,
    Project,
    Standins,
    certificate,
    disk_full,
    run_readme,
    site,
    ssh,
    wait_for_the_lock,
)
from tests.helpers.markdown import readme_commands
from tools import standin
from tools.stagediff import same_in
from tools.stages import STAGES

pytestmark = pytest.mark.stages('09')

# Booted in this order, halted in the other: the backup server last, which the others'
# PostgreSQL reaches as it shuts down (its archiver sends the last WAL).
SERVERS = ('backup', 'staging', 'production')
KEYSCAN = 'ssh-keyscan -t ed25519 "$STAGING_HOST" "$PRODUCTION_HOST" "$BACKUP_HOST" > known_hosts'
PROVISION_BACKUP = 'pyinfra inventory.py backup_server.py --limit backup'
PROVISION = 'pyinfra inventory.py provision.py --exclude backup'
BACKUP_NOW = 'ssh root@"$PRODUCTION_HOST" systemctl start app-deploy-backup@production'
STATUS = 'ssh root@"$PRODUCTION_HOST" app-deploy-backup status production'
INFO = 'ssh root@"$PRODUCTION_HOST" runuser -u postgres -- pgbackrest --stanza=production info'
EXAMPLE_TIME = '2026-12-02 10:15:00+00'
RESTORE_TO = (
    'pyinfra inventory.py restore.py --limit production --data force=yes'
    f' --data target="{EXAMPLE_TIME}"'
)
RESTORE = 'pyinfra inventory.py restore.py --limit production --data force=yes'
REPROVISION = 'pyinfra inventory.py provision.py --limit production'
COPY = 'pyinfra inventory.py restore.py --limit staging --data from=production --data force=yes'
RUNS = [
    'pip install -r deploy/requirements.txt',  # the nox session, from requirements-dev.txt
    'cd deploy',  # Project.run
    'export STAGING_HOST=staging.example.com',  # the stand-ins' addresses, in Project.env
    'export PRODUCTION_HOST=example.com',
    'export BACKUP_HOST=backup.example.net',
    KEYSCAN,
    FINGERPRINTS,
    PIN,
    PROVISION_BACKUP,
    PROVISION,
    'python3 build.py',
    'pyinfra inventory.py release.py --limit staging',
    'pyinfra inventory.py release.py --limit production',
    BACKUP_NOW,
    STATUS,
    INFO,
    RESTORE_TO,
    RESTORE,
    REPROVISION,  # a lost server rebuilt
    RESTORE,
    'pyinfra inventory.py release.py --limit production',
    COPY,
]
# Stage 06's, run there on the same files (the test below checks they are).
RUN_BY_STAGE_06 = ['pyinfra inventory.py rollback.py --limit production']
NOT_RUN = [  # certbot needs a domain that Let's Encrypt can reach
    'sudo apt install certbot',
    'sudo certbot certonly --webroot -w /var/www/letsencrypt -d example.com'
    ' --deploy-hook "systemctl reload nginx"',
]
# Longer than archive_timeout (60 s), so that some of what is typed has been archived.
TYPING_SECONDS = 75
PSQL = 'runuser -u postgres -- psql -qAtX -d app_deploy_production -c'


@pytest.fixture(scope='module')
def standins(tmp_path_factory):
    """The three servers; staging and production may reach backup's ssh."""
    servers = Standins(tmp_path_factory.mktemp('keys'))
    try:
        for name in SERVERS:
            servers.boot(name)
        for env in DOMAINS:
            standin.let_reach(servers.hosts[env], servers.hosts['backup'], 22)
        yield servers
    finally:
        servers.close()


@pytest.fixture(scope='module')
def project(stage_dir, stage_bin, standins, tmp_path_factory):
    folder = tmp_path_factory.mktemp('project') / 'app'
    project = Project(stage_dir, folder, stage_bin, dict(standins.hosts), keyscan=KEYSCAN)
    project.ssh_as_reader()
    return project


# What systemd 257 says, in a stand-in on this machine's hybrid cgroups, when it starts
# a unit in the instant after it stopped it (seen once in a few runs, restarting
# PostgreSQL); not seen on a server. Provisioning is run again, as a reader would.
SPAWN_RACE = "Failed to spawn 'start' task: No such file or directory"


@pytest.fixture(scope='module')
def provisioned(project):
    """The backup server provisioned, then staging and production; the outputs."""
    started = time.monotonic()
    outputs = [run_readme(project, PROVISION_BACKUP).stdout]
    first = run_readme(project, PROVISION, check=False)
    if first.returncode and SPAWN_RACE in project.failed_units():
        print(f"provisioning met the stand-ins' systemd race ({SPAWN_RACE}); once more")
        first = run_readme(project, PROVISION)
    assert first.returncode == 0, first.stdout + project.failed_units()
    print(f'provisioned the three servers in {time.monotonic() - started:.1f} s')
    return [*outputs, first.stdout]


@pytest.fixture(scope='module')
def production(project, provisioned, tmp_path_factory):
    """The stage deployed to staging, then production; names typed into production.
    Returns production's site."""
    project.build()
    run_readme(project, 'pyinfra inventory.py release.py --limit staging')
    run_readme(project, 'pyinfra inventory.py release.py --limit production')
    host = project.servers['production']
    production = site(host, 'production', certificate(host, tmp_path_factory.mktemp('tls')))
    for name in ('Foobar', 'Mark', 'Joanna'):
        production.add(name)
    return production


def names_in_the_database(host):
    listed = ssh(host, f'{PSQL} "SELECT name FROM names ORDER BY id"')
    return listed.splitlines()


def server_now(host):
    """The server's clock, as PostgreSQL prints it, to the microsecond."""
    return ssh(host, f'{PSQL} "SELECT to_char(now(), \'YYYY-MM-DD HH24:MI:SS.USOF\')"')


def test_the_readme_commands_are_those_run_here(stage_dir):
    commands = [
        line
        for heading in ('Deploy it', 'Back it up')
        for line in readme_commands(stage_dir, heading)
    ]
    assert sorted(commands) == sorted(RUNS + RUN_BY_STAGE_06 + NOT_RUN)
    assert same_in(STAGES['06'], stage_dir, ['deploy/rollback.py', 'deploy/app-deploy-release'])


def test_provisioning_refuses_the_wrong_server_with_one_line(project, provisioned):
    """provision.py on the backup server, or backup_server.py on another, stops with one
    line before it changes anything."""
    for command, line in [
        ('pyinfra inventory.py provision.py --limit backup', 'provisioned by backup_server.py'),
        ('pyinfra inventory.py backup_server.py --limit staging', 'is for the backup server'),
    ]:
        result = run_readme(project, command, check=False)
        assert result.returncode == 1
        assert line in result.stdout.splitlines()[-1], result.stdout


def test_the_backups_reach_the_backup_server_encrypted(project, production):
    run_readme(project, BACKUP_NOW)
    status = run_readme(project, STATUS).stdout.strip()
    assert re.fullmatch(
        r'production backups ok; newest backup \d min ago, newest WAL archived \d+ min ago', status
    ), status
    backup = project.servers['backup']
    repository = '/srv/backups/production/repo'
    assert ssh(backup, f'head -c 8 {repository}/backup/production/backup.info') == 'Salted__'
    # The names typed are nowhere in it as they were typed: all is encrypted.
    found = backup.ssh(f'grep -rl Joanna {repository}', check=False)
    assert found.returncode == 1, found.stdout
    assert ssh(backup, f'ls {repository}/backup/production').count('F') >= 1  # a full one


def test_pgbackrest_lists_the_backups_and_the_wal(project, production):
    listed = run_readme(project, INFO).stdout
    print(listed)
    assert 'status: ok' in listed and 'cipher: aes-256-cbc' in listed, listed
    assert re.search(r'wal archive min/max \(17\): 0+\w+/0+\w+', listed), listed
    assert re.search(r'^ +full backup: \d{8}-\d{6}F$', listed, re.MULTILINE), listed


def test_the_nightly_backup_is_a_timer_systemd_accepts(project, provisioned):
    for env in DOMAINS:
        host = project.servers[env]
        units = f'app-deploy-backup@{env}.service app-deploy-backup@{env}.timer'
        verified = host.ssh(f'systemd-analyze verify {units}', check=False)
        assert (verified.returncode, verified.stdout + verified.stderr) == (0, '')
        assert ssh(host, f'systemctl is-enabled app-deploy-backup@{env}.timer') == 'enabled'
        next_run = ssh(
            host, f'systemctl show -P NextElapseUSecRealtime app-deploy-backup@{env}.timer'
        )
        assert re.search(r' 0[34]:\d\d:\d\d ', next_run), (
            next_run
        )  # 03:00 UTC, 30 min at most late
        user = ssh(host, f'systemctl show -P User app-deploy-backup@{env}.service')
        assert user == 'postgres'


def test_each_environment_gets_sftp_in_its_own_folder_alone(project, provisioned):
    backup = project.servers['backup']
    key = project.folder / 'deploy/secrets/production-backup'
    options = [
        '-i',
        str(key),
        '-o',
        f'UserKnownHostsFile={backup.known_hosts}',
        '-o',
        'BatchMode=yes',
    ]
    shell = project.run('ssh', *options, f'production@{backup.address}', 'id', check=False)
    assert 'This service allows sftp connections only.' in shell.stdout
    listing = project.run(
        'bash',
        '-c',
        f"echo 'ls -a /' | sftp {shlex.join(options)} -b - production@{backup.address}",
    )
    assert listing.stdout.split()[-3:] == ['/.', '/..', '/repo']  # its folder, seen as /
    as_staging = project.run('ssh', *options, f'staging@{backup.address}', 'true', check=False)
    assert 'Permission denied' in as_staging.stdout  # production's key is not staging's


def test_a_restore_to_a_moment_undoes_names_deleted_by_hand(project, production):
    host = project.servers['production']
    production.add('Written before')
    moment = server_now(host)
    time.sleep(1)
    production.add('Written after')
    ssh(host, f'{PSQL} "DELETE FROM names"')
    assert production.names() == []
    restored = run_readme(project, RESTORE_TO.replace(EXAMPLE_TIME, moment)).stdout
    (said,) = [line for line in restored.splitlines() if 'production: restored backup' in line]
    assert said.endswith(': 4 names'), said
    assert names_in_the_database(host) == ['Foobar', 'Mark', 'Joanna', 'Written before']
    assert production.names() == ['Written before', 'Joanna', 'Mark', 'Foobar']  # newest first


# A release whose migration destroys what it should keep: every name overwritten.
CARELESS_MIGRATION = """\"\"\"Tidy the names (test release: it loses them)\"\"\"
from alembic import op

revision = 'c3d4e5f6a7b8'
down_revision = '948a6eac32b5'


def upgrade():
    op.execute("UPDATE names SET name = 'tidied'")


def downgrade():
    pass
"""


def test_a_release_whose_migration_destroys_names_is_undone_by_a_restore(project, production):
    """Deployed to staging and production, the release overwrites every name; production
    is restored to the moment before its deploy and rolled back to the release before."""
    host = project.servers['production']
    before = names_in_the_database(host)
    project.build(
        'Tidy the names', {'migrations/versions/c3d4e5f6a7b8_tidy.py': CARELESS_MIGRATION}
    )
    run_readme(project, 'pyinfra inventory.py release.py --limit staging')
    moment = server_now(host)
    time.sleep(1)
    run_readme(project, 'pyinfra inventory.py release.py --limit production')
    assert set(names_in_the_database(host)) == {'tidied'}
    run_readme(project, RESTORE_TO.replace(EXAMPLE_TIME, moment))
    run_readme(project, 'pyinfra inventory.py rollback.py --limit production')
    assert names_in_the_database(host) == before
    assert production.names() == before[::-1]
    project.pyinfra('rollback.py', 'staging')  # so that a deploy from staging is not it again


def refused(result, line, production):
    """``result`` (a restore's) failed, saying ``line`` in one line of its own, and the
    site still serves."""
    said = [text for text in result.stdout.splitlines() if 'app-deploy-backup: ' in text]
    assert result.returncode == 1 and len(said) == 1 and line in said[0], result.stdout
    assert production.get('/health').status == 200


def wait_for_status(project, state, seconds=240):
    """The freshness check's line, once it says ``state`` (within ``seconds``)."""
    deadline = time.monotonic() + seconds
    while state not in (status := run_readme(project, STATUS, check=False).stdout):
        assert time.monotonic() < deadline, status
        time.sleep(5)
    return status.strip()


@pytest.mark.parametrize(
    ('command', 'line'),
    [
        (RESTORE.replace(' --data force=yes', ''), 'the production database runs: restoring'),
        (RESTORE_TO.replace(EXAMPLE_TIME, '2099-01-01 00:00:00+00'), 'is in the future'),
        (
            RESTORE_TO.replace(EXAMPLE_TIME, '2020-01-01 00:00:00+00'),
            'is before the oldest backup',
        ),
        (RESTORE_TO.replace(EXAMPLE_TIME, 'yesterday'), 'not a time with its zone'),
    ],
    ids=['without force', 'in the future', 'before the oldest backup', 'no time zone'],
)
def test_a_restore_it_cannot_do_stops_with_one_line_and_changes_nothing(
    project, production, command, line
):
    host = project.servers['production']
    before = names_in_the_database(host)
    refused(run_readme(project, command, check=False), line, production)
    assert names_in_the_database(host) == before


def test_a_wrong_passphrase_stops_the_restore_with_one_line(project, production):
    host = project.servers['production']
    passphrase = '/etc/pgbackrest/conf.d/passphrase.conf'
    wrong = "printf '[global]\\nrepo1-cipher-pass=not-the-passphrase\\n'"
    ssh(host, f'cp -p {passphrase} /root/passphrase.conf && {wrong} > {passphrase}')
    try:
        result = run_readme(project, RESTORE, check=False)
    finally:
        ssh(host, f'mv /root/passphrase.conf {passphrase}')
    refused(result, 'the backups of production cannot be read (a wrong passphrase?)', production)


def test_a_second_restore_while_one_runs_is_refused(project, production):
    """Two restores of production at once: the one that comes second, on the server
    itself (restore.py runs that command), is refused; the first ends as it should."""
    host = project.servers['production']
    before = names_in_the_database(host)
    first = project.popen_pyinfra('restore.py', 'production', '--data', 'force=yes')
    wait_for_the_lock(host, first, env='restore-production')
    second = host.ssh('app-deploy-backup restore production --force', check=False)
    output = first.communicate(timeout=600)[0]
    assert first.returncode == 0, output
    assert (second.returncode, second.stderr.strip()) == (
        1,
        'app-deploy-backup: another restore of production is running',
    )
    assert names_in_the_database(host) == before
    assert production.get('/health').status == 200


def test_the_site_serves_while_the_backup_server_is_cut_off_and_no_wal_is_lost(
    project, production
):
    host, backup = project.servers['production'], project.servers['backup']
    with standin.cut_off(host, backup):
        production.add('Written while cut off')
        ssh(host, f'{PSQL} "SELECT pg_switch_wal()"')  # a segment for the archiver to try
        print(f'cut off: {wait_for_status(project, "FAILING")}')
        assert production.get('/').status == 200
    wait_for_status(project, 'backups ok')
    # Every segment is there: a restore to the newest point has the name written then.
    run_readme(project, RESTORE)
    assert 'Written while cut off' in names_in_the_database(host)


def test_the_site_serves_while_the_backup_servers_disk_is_full_and_no_wal_is_lost(
    project, production
):
    host, backup = project.servers['production'], project.servers['backup']
    with disk_full(backup, '/srv/backups/production/repo'):
        production.add('Written while the disk was full')
        ssh(host, f'{PSQL} "SELECT pg_switch_wal()"')  # a segment for the archiver to try
        print(f'disk full: {wait_for_status(project, "FAILING")}')
        assert production.get('/').status == 200
    wait_for_status(project, 'backups ok')
    run_readme(project, RESTORE)
    assert 'Written while the disk was full' in names_in_the_database(host)


def test_a_copy_of_production_goes_into_staging_which_cannot_change_productions_backups(
    project, production
):
    """Staging gets production's names, under its own database's name, from production's
    backups read with the read-only key; the key and passphrase do not stay on staging;
    that key can neither delete nor add in production's repository; staging's own backups
    go on, now of the copy."""
    staging = project.servers['staging']
    in_production = names_in_the_database(project.servers['production'])
    copied = run_readme(project, COPY).stdout
    (said,) = [line for line in copied.splitlines() if 'staging: restored backup' in line]
    assert ' of production, ' in said and said.endswith(f': {len(in_production)} names'), said
    listed = ssh(staging, PSQL.replace('production', 'staging') + ' "SELECT name FROM names"')
    assert sorted(listed.splitlines()) == sorted(in_production)
    staging_site = site(staging, 'staging', certificate(staging, project.folder))
    assert staging_site.names() == in_production[::-1]
    assert ssh(staging, 'ls /etc/pgbackrest') == 'conf.d\nknown_hosts\npgbackrest.conf'
    status = ssh(staging, 'app-deploy-backup status staging')
    assert re.match(r'staging backups ok; newest backup [01] min ago', status), status
    backup = project.servers['backup']
    options = [
        '-i',
        str(project.folder / 'deploy/secrets/production-readonly'),
        '-o',
        f'UserKnownHostsFile={backup.known_hosts}',
        '-o',
        'BatchMode=yes',
    ]
    info_file = '/repo/backup/production/backup.info'
    for change in (f'rm {info_file}', 'mkdir /repo/new', f'put /etc/hostname {info_file}'):
        tried = project.run(
            'bash',
            '-c',
            f"echo '{change}' | sftp {shlex.join(options)} -b - production-readonly@{backup.address}",
            check=False,
        )
        assert tried.returncode == 1 and 'Permission denied' in tried.stdout, tried.stdout
    assert ssh(backup, f'head -c 8 /srv/backups/production{info_file}') == 'Salted__'


def timed_on(host, command):
    """Run ``command`` on ``host``; the seconds it took."""
    started = time.monotonic()
    ssh(host, command, timeout=600)
    return time.monotonic() - started


def test_a_physical_backup_of_100_000_names_beside_pg_dump(project, production):
    """Backup and restore times and sizes, pgBackRest's full backup and restore beside
    pg_dump and pg_restore of the same database, in one run (printed, not asserted);
    the names are then part of production for the lost-server drill below."""
    host = project.servers['production']
    many = "INSERT INTO names (name) SELECT 'Name ' || n FROM generate_series(1, 100000) n"
    ssh(host, f'{PSQL} "{many}"')
    count = len(names_in_the_database(host))
    as_postgres = 'runuser -u postgres --'
    figures = {
        'pgBackRest full backup': timed_on(
            host, f'{as_postgres} pgbackrest --stanza=production --type=full backup'
        ),
        'pg_dump -Fc': timed_on(
            host, f'{as_postgres} pg_dump -Fc -d app_deploy_production -f /tmp/names.dump'
        ),
        'pgBackRest restore (app-deploy-backup)': timed_on(
            host, 'app-deploy-backup restore production --force'
        ),
        'pg_restore into a new database': timed_on(
            host,
            f'{as_postgres} createdb names_copy && {as_postgres} pg_restore -d names_copy'
            ' /tmp/names.dump',
        ),
    }
    (newest,) = [
        backup
        for backup in json.loads(
            ssh(host, f'{as_postgres} pgbackrest --stanza=production --output=json info')
        )[0]['backup']
        if backup['type'] == 'full'
    ][-1:]
    sizes = {
        'pgBackRest full backup': newest['info']['repository']['delta'],
        'pg_dump -Fc': int(ssh(host, 'stat -c %s /tmp/names.dump')),
        'database': newest['info']['size'],
    }
    copied = ssh(host, f"{as_postgres} psql -qAtX -d names_copy -c 'SELECT count(*) FROM names'")
    ssh(host, f'{as_postgres} dropdb names_copy && rm /tmp/names.dump')
    print(f'{count} names: ' + ', '.join(f'{what} {took:.1f} s' for what, took in figures.items()))
    print('sizes: ' + ', '.join(f'{what} {size / 1e6:.1f} MB' for what, size in sizes.items()))
    assert len(names_in_the_database(host)) == count == int(copied)


def test_a_lost_production_server_is_rebuilt_from_the_backups(project, production, standins):
    """Names are written until the server is lost; a new one is provisioned, restored
    and given the release staging runs. RPO: the newest name it has, against the loss;
    RTO: from the loss to the site answering with the names. The names go in through
    psql, one each 0.2 s (the site lets one address post a few a minute: Part 5)."""
    lost, typed, stop = project.servers['production'], [], threading.Event()

    def type_names():
        while not stop.is_set():
            name = f'Typed at {time.time():.3f}'
            insert = f"INSERT INTO names (name) VALUES ('{name}')"
            try:
                lost.ssh(f'{PSQL} "{insert}"', timeout=10)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                return  # the server is gone
            typed.append((time.time(), name))  # committed: psql has returned
            time.sleep(0.2)

    with concurrent.futures.ThreadPoolExecutor() as pool:
        typing = pool.submit(type_names)
        started = time.time()
        time.sleep(TYPING_SECONDS)
        lost_at = time.time()
        standins.lose('production', power_cut=True)  # as a provider's outage
        stop.set()
        typing.result()
    host = standins.boot('production')  # a new server, in the lost one's place
    standin.let_reach(host, standins.hosts['backup'], 22)
    project.point('production', host)
    project.pin_keys()
    run_readme(project, REPROVISION)
    restored = run_readme(project, RESTORE).stdout
    run_readme(project, 'pyinfra inventory.py release.py --limit production')
    rebuilt = site(host, 'production', certificate(host, project.folder))
    assert rebuilt.get('/health').status == 200
    back_at = time.time()
    kept = names_in_the_database(host)
    assert {'Foobar', 'Mark', 'Joanna'} <= set(kept)
    # What survived is every name typed up to some moment, and none after it.
    survived = [(moment, name) for moment, name in typed if name in kept]
    assert survived == typed[: len(survived)]
    newest = survived[-1][0] if survived else started
    (said,) = [line for line in restored.splitlines() if 'restored backup' in line]
    print(
        f'RPO {lost_at - newest:.1f} s ({len(survived)} of {len(typed)} names written survived);'
        f' RTO {back_at - lost_at:.0f} s; {said.strip()}'
    )
    if survived:
        assert rebuilt.names()[0] == survived[-1][1]
