"""Switch an environment back to the release it ran before the current one.

    pyinfra inventory.py rollback.py --limit production
    pyinfra inventory.py rollback.py --limit production --data release=NAME

The database stays as it is: a migration that the older release cannot work with
needs a migration of its own (docs, Part 6).
"""

from pyinfra import host
from pyinfra.operations import server

release = host.data.get('release', '')
server.shell(
    name=f'Switch {host.data.env} back to {release or "the release before"}',
    # As root, or as deploy, whom sudo lets run app-deploy-release alone (provision.py).
    commands=[
        f'sudo -n /usr/local/sbin/app-deploy-release rollback {host.data.env} {release}'.strip()
    ],
)
