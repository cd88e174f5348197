"""Restore an environment's database from the backup server: its newest point, or a moment.

    pyinfra inventory.py restore.py --limit production --data force=yes
    pyinfra inventory.py restore.py --limit production --data force=yes \
        --data target="2026-12-02 10:15:00+00"
    pyinfra inventory.py restore.py --limit staging --data from=production --data force=yes

It replaces the database the server runs, so it asks for force=yes; meanwhile the site
answers with nginx's 502 page. It says which backup it started from, the time of the
last commit it put back, and how many names there are. On a new server, provision it
first (provision.py): the key and passphrase in deploy/secrets/ are all it needs.

from=production puts a copy of production's data on staging (Part 9 says what to think
of first): staging reads production's backups for that restore alone, with the
read-only key and production's passphrase, which the server deletes when it is done.
"""

import io
import shlex
from pathlib import Path

from pyinfra import host
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import files, python

env = host.data.env
source = host.data.get('from', env)
command = ['/usr/local/sbin/app-deploy-backup', 'restore', env]
if host.data.get('target'):
    command += ['--target', host.data.target]
if host.data.get('force') == 'yes':
    command.append('--force')
if source != env:
    if (source, env) != ('production', 'staging'):
        raise DeployError(f'from={source} onto {env}: only production is copied, into staging')
    copy = '/etc/pgbackrest/copy-of-production'  # app-deploy-backup deletes it when done
    passphrase = (Path('secrets') / 'production-backup.passphrase').read_text().strip()
    files.directory(name=f'Add {copy}', path=copy, user='root', group='postgres', mode='750')
    files.put(
        name="Install the read-only key to production's backups, for this restore",
        src='secrets/production-readonly',
        dest=f'{copy}/readonly_ed25519',
        user='postgres',
        group='postgres',
        mode='600',
    )
    files.put(
        name="Install what reads production's backups, with its passphrase",
        src=io.StringIO(
            '[production]\npg1-path=/var/lib/postgresql/17/main\n'
            'repo1-sftp-host-user=production-readonly\n'
            f'repo1-sftp-private-key-file={copy}/readonly_ed25519\n'
            f'repo1-cipher-pass={passphrase}\n'
        ),
        dest=f'{copy}/production.conf',
        user='root',
        group='postgres',
        mode='640',
    )
    command += ['--from', source]


def restore(state, host):
    """Run app-deploy-backup restore, and show what it said, as it says it."""
    status, output = host.run_shell_command(
        shlex.join(command), _sudo=host.data.ssh_user != 'root'
    )
    for line in output.stdout_lines + output.stderr_lines:
        host.log(line)
    return status


python.call(name=f'Restore the {env} database from the backup server', function=restore)
