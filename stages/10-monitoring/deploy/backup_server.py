"""Make a fresh Debian 13 server the keeper of both environments' backups. Run it first:

    pyinfra inventory.py backup_server.py --limit backup

It serves each environment an SFTP folder of its own and nothing else: the user
`staging` or `production` logs in with that environment's key alone, locked in
/srv/backups/<env>/ (a chroot), with no shell. pgBackRest on the database server
writes its encrypted repository there; nothing here can read it without the
passphrase, which this server never sees. A third user, `production-readonly`, may
read production's folder and change nothing: a copy of production into staging uses
it (restore.py).

The keys and passphrases are made on your machine, in deploy/secrets/ (git ignores
it), the first time: keep that folder safe and apart from the servers (a password
manager, an encrypted disk). With it and this server, a lost database server is
rebuilt (restore.py); without it, the backups cannot be read.
"""

import subprocess
from pathlib import Path

from pyinfra import host, local
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import apt, files, server, systemd

ENVS = ('staging', 'production')
SECRETS = Path('secrets')

if host.data.env != 'backup':
    raise DeployError(f'backup_server.py is for the backup server, not {host.data.env}')

SECRETS.mkdir(mode=0o700, exist_ok=True)
for key in [*(SECRETS / f'{env}-backup' for env in ENVS), SECRETS / 'production-readonly']:
    if not key.exists():
        command = ['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', key.name]
        subprocess.run([*command, '-f', key], check=True)
for env in ENVS:
    passphrase = SECRETS / f'{env}-backup.passphrase'
    if not passphrase.exists():
        # 48 random bytes as base64, as pgBackRest's user guide makes its passphrase.
        made = subprocess.run(['openssl', 'rand', '-base64', '48'], capture_output=True)
        passphrase.touch(mode=0o600)
        passphrase.write_bytes(made.stdout.replace(b'\n', b'') + b'\n')

apt.packages(
    name='Install nftables',
    packages=['nftables'],
    no_recommends=True,
    update=True,
    cache_time=24 * 3600,
)
files.directory(
    name="Add the folder of the environments' keys, which only root may change",
    path='/etc/ssh/backup-keys',
    mode='755',
)
for env in ENVS:
    server.user(
        name=f'Add the user {env} backs up as: no shell, no password',
        user=env,
        system=True,
        shell='/usr/sbin/nologin',
        home='/nonexistent',
        create_home=False,
    )
    # sshd locks the user in this folder, which must be root's and not writable by it;
    # the repository inside it is the user's alone.
    files.directory(name=f'Add /srv/backups/{env}', path=f'/srv/backups/{env}', mode='755')
    files.directory(
        name=f"Add {env}'s repository, which its group may read",
        path=f'/srv/backups/{env}/repo',
        user=env,
        group=env,
        mode='750',
    )
    files.put(
        name=f"Let in {env}'s backup key",
        src=str(SECRETS / f'{env}-backup.pub'),
        dest=f'/etc/ssh/backup-keys/{env}',
        mode='644',
    )

server.user(
    name="Add the user that reads production's backups: in its group, no shell",
    user='production-readonly',
    system=True,
    groups=['production'],
    shell='/usr/sbin/nologin',
    home='/nonexistent',
    create_home=False,
)
files.put(
    name="Let in the read-only key to production's backups",
    src=str(SECRETS / 'production-readonly.pub'),
    dest='/etc/ssh/backup-keys/production-readonly',
    mode='644',
)

sftp = files.put(
    name='Give those users SFTP in their own folders, and nothing else',
    src='sshd-backups.conf',
    dest='/etc/ssh/sshd_config.d/10-backups.conf',
    mode='644',
)
if sftp.will_change:
    server.shell(name="Check sshd's settings", commands=['sshd -t'])
    systemd.service(name='Reload sshd', service='ssh.service', reloaded=True)

local.include('access.py')
local.include('monitoring.py')
