"""The servers, one per environment, for pyinfra (run in deploy/): pyinfra inventory.py ...

Each group is an environment with its one server, named by an environment variable:
STAGING_HOST and PRODUCTION_HOST, a host name or an address that ssh reaches as root;
BACKUP_HOST, the server that keeps both environments' backups (backup_server.py); and
MONITOR_HOST, the one that watches them all (monitor_server.py). The monitoring server
reaches each at its address on a private network, ENV_PRIVATE_ADDRESS (STAGING_,
PRODUCTION_, BACKUP_, MONITOR_), or else at the host, which must then be an address.
Alerts go by mail through your relay: ALERT_SMTP (host:port), ALERT_FROM and ALERT_TO.
The site's domain is the host name unless STAGING_DOMAIN or PRODUCTION_DOMAIN says
otherwise; STAGING_CERTIFICATE and PRODUCTION_CERTIFICATE name the folder of a
certificate from certbot (README), else provision.py makes a self-signed one. ssh
checks each server's key against known_hosts and refuses a server that is not there,
or whose key differs: add a key only after checking it (README).
"""

import os

_SSH = {
    'ssh_user': 'root',
    'ssh_known_hosts_file': 'known_hosts',
    'ssh_strict_host_key_checking': 'yes',  # never add or change a key by itself
}


def _address(env):
    """Where the monitoring server reaches the server of ``env``, or None."""
    return os.environ.get(f'{env.upper()}_PRIVATE_ADDRESS', os.environ.get(f'{env.upper()}_HOST'))


def _server(env):
    """The group of the environment ``env``: its server, or none when it is not set."""
    host = os.environ.get(f'{env.upper()}_HOST')
    data = {**_SSH, 'env': env, 'domain': os.environ.get(f'{env.upper()}_DOMAIN', host)}
    data.update(address=_address(env), monitor=_address('monitor'))
    if os.environ.get(f'{env.upper()}_CERTIFICATE'):
        data['certificate'] = os.environ[f'{env.upper()}_CERTIFICATE']
    return [(host, data)] if host else []


staging = _server('staging')
production = _server('production')
backup = _server('backup')
monitor = _server('monitor')
