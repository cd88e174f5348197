"""Backups of the database with pgBackRest, to the backup server: provision.py includes it.

Every finished WAL segment goes to the backup server as PostgreSQL writes it, and a
backup is made each night; a restore replays the WAL onto the newest backup before
the moment asked for (restore.py). The key and the passphrase come from
deploy/secrets/ (backup_server.py makes them): the server keeps a copy, you keep them.
"""

import io
from pathlib import Path

from pyinfra import host, inventory
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import files, server, systemd

env = host.data.env
backup_servers = inventory.get_group('backup', [])
if not backup_servers:
    raise DeployError('set BACKUP_HOST: the server that keeps the backups (backup_server.py)')
key = Path('secrets') / f'{env}-backup'
passphrase = Path('secrets') / f'{env}-backup.passphrase'
if not key.exists() or not passphrase.exists():
    raise DeployError(f'{key} is not here: provision the backup server first (README)')

files.directory(
    name="Add postgres's ssh folder",
    path='/var/lib/postgresql/.ssh',
    user='postgres',
    group='postgres',
    mode='700',
)
files.put(
    name="Install this environment's key to the backup server",
    src=str(key),
    dest='/var/lib/postgresql/.ssh/backup_ed25519',
    user='postgres',
    group='postgres',
    mode='600',
)
for folder in ('/etc/pgbackrest', '/etc/pgbackrest/conf.d'):
    files.directory(name=f'Add {folder}', path=folder, user='root', group='postgres', mode='750')
files.put(
    name="Pin the backup server's host key (the known_hosts you checked)",
    src='known_hosts',
    dest='/etc/pgbackrest/known_hosts',
    mode='644',
)
files.template(
    name="Install pgBackRest's settings",
    src='pgbackrest.conf',
    dest='/etc/pgbackrest/pgbackrest.conf',
    user='root',
    group='postgres',
    mode='640',
    env=env,
    backup_host=backup_servers[0].name,
)
files.put(
    name='Install the passphrase the backups are encrypted with',
    src=io.StringIO(f'[global]\nrepo1-cipher-pass={passphrase.read_text().strip()}\n'),
    dest='/etc/pgbackrest/conf.d/passphrase.conf',
    user='root',
    group='postgres',
    mode='640',
)
archiving = files.template(
    name='Make PostgreSQL hand each WAL segment to pgBackRest',
    src='postgresql-archiving.conf',
    dest='/etc/postgresql/17/main/conf.d/archiving.conf',
    mode='644',
    env=env,
)
systemd.service(
    name='Restart PostgreSQL, which reads archive_mode at start only',
    service='postgresql@17-main.service',
    running=True,
    restarted=archiving.will_change,
)

files.put(
    name='Install app-deploy-backup, which backs up, checks and restores',
    src='app-deploy-backup',
    dest='/usr/local/sbin/app-deploy-backup',
    mode='755',
)
server.shell(
    name='Create the stanza on the backup server; check that WAL reaches it',
    commands=[f'/usr/local/sbin/app-deploy-backup setup {env}'],
)
units = [
    files.put(
        name=f'Install the systemd {unit} of the nightly backup',
        src=f'app-deploy-backup@.{unit}',
        dest=f'/etc/systemd/system/app-deploy-backup@.{unit}',
        mode='644',
    )
    for unit in ('service', 'timer')
]
if any(unit.will_change for unit in units):
    systemd.daemon_reload(name='Make systemd read them')
systemd.service(
    name='Start the timer, now and at boot',
    service=f'app-deploy-backup@{env}.timer',
    running=True,
    enabled=True,
)
