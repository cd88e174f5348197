"""Restore an environment's database from the backup server: its newest point, or a moment.

    pyinfra inventory.py restore.py --limit production --data force=yes
    pyinfra inventory.py restore.py --limit production --data force=yes \
        --data target="2026-12-02 10:15:00+00"

It replaces the database the server runs, so it asks for force=yes; meanwhile the site
answers with nginx's 502 page. It says which backup it started from, the time of the
last commit it put back, and how many names there are. On a new server, provision it
first (provision.py): the key and passphrase in deploy/secrets/ are all it needs.
"""

import shlex

from pyinfra import host
from pyinfra.operations import python

env = host.data.env
command = ['/usr/local/sbin/app-deploy-backup', 'restore', env]
if host.data.get('target'):
    command += ['--target', host.data.target]
if host.data.get('force') == 'yes':
    command.append('--force')


def restore(state, host):
    """Run app-deploy-backup restore, and show what it said, as it says it."""
    status, output = host.run_shell_command(
        shlex.join(command), _sudo=host.data.ssh_user != 'root'
    )
    for line in output.stdout_lines + output.stderr_lines:
        host.log(line)
    return status


python.call(name=f'Restore the {env} database from the backup server', function=restore)
