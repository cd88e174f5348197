"""Make a fresh Debian 13 server ready to run the app, for one environment.

    pyinfra inventory.py provision.py --limit staging

Idempotent: each operation checks the server first and changes only what differs, so
a second run changes nothing (pyinfra says "No changes"). The app's secrets are made
on the server, once, and never leave it; the backups' key and passphrase come from
deploy/secrets/ on your machine (backup_server.py makes them), as a restore needs
them when the server is gone.
"""

from pyinfra import host, local
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, postgres, server, systemd

env = host.data.env  # staging or production, from deploy/inventory.py
if env in ('backup', 'monitor'):
    raise DeployError(f'the {env} server is provisioned by {env}_server.py: add --limit')
if not host.data.monitor:  # the site lets it read the app's metrics (access.py: the firewall)
    raise DeployError('set MONITOR_HOST: the server that watches the others (monitor_server.py)')
domain = host.data.domain
# The certificate's folder (fullchain.pem, privkey.pem): a self-signed one made here,
# until certbot has one for the domain (README): /etc/letsencrypt/live/<domain>.
SELF_SIGNED = '/etc/app-deploy/tls'
certificate = host.data.get('certificate', SELF_SIGNED)
database = f'app_deploy_{env}'  # the database, and the role that owns it
env_file = f'/etc/app-deploy/{env}.env'

apt.packages(
    name='Install Python, nginx, PostgreSQL, pgBackRest, curl, nftables and sudo',
    packages=['python3-venv', 'nginx', 'postgresql', 'pgbackrest', 'curl', 'nftables', 'sudo'],
    no_recommends=True,
    update=True,
    cache_time=24 * 3600,
)

server.user(
    name='Add the user the app runs as: no home, no shell, no password',
    user='app-deploy',
    system=True,
    shell='/usr/sbin/nologin',
    home='/nonexistent',
    create_home=False,
)

server.user(
    name='Add the user deploys log in as: a key, no password, sudo for one command',
    user='deploy',
    system=True,
    shell='/bin/sh',
    home='/home/deploy',
    create_home=True,
)
# Its keys are yours to add, one line each: CI's (Part 7), or your own for deploys.
files.directory(
    name="Add deploy's ssh folder",
    path='/home/deploy/.ssh',
    user='deploy',
    group='deploy',
    mode='700',
)
files.file(
    name="Add deploy's authorized_keys, kept as it is",
    path='/home/deploy/.ssh/authorized_keys',
    user='deploy',
    group='deploy',
    mode='600',
)
sudoers = files.put(
    name='Let deploy run app-deploy-release as root, and nothing else',
    src='sudoers',
    dest='/etc/sudoers.d/app-deploy',
    mode='440',
)
if sudoers.will_change:
    server.shell(name="Check sudo's rules", commands=['visudo -cq'])

postgres.role(
    name='Add the PostgreSQL role of the environment',
    role=database,
    login=True,
    _sudo=True,
    _sudo_user='postgres',
)
postgres.database(
    name='Add its database, owned by that role',
    database=database,
    owner=database,
    _sudo=True,
    _sudo_user='postgres',
)

files.directory(
    name='Add /etc/app-deploy, for root alone',
    path='/etc/app-deploy',
    user='root',
    group='root',
    mode='700',
)
if not host.get_fact(File, path=env_file):
    # Random, made here, written to a file only root reads (systemd passes it to the app);
    # the role's password goes to psql on its input, never on a command line or in a log.
    server.shell(
        name='Make the environment file: a secret key, and a password for the role',
        commands=[
            f"""set -e
            umask 077
            key=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
            password=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
            printf "ALTER ROLE {database} PASSWORD '%s';\\n" "$password" \
                | runuser -u postgres -- psql --quiet --no-psqlrc -v ON_ERROR_STOP=1
            printf '%s\\n' "SECRET_KEY=$key" \
                "{env.upper()}_DATABASE_URL=postgresql://{database}:$password@127.0.0.1:5432/{database}" \
                "TRUSTED_HOSTS={domain}" > {env_file}.new
            mv {env_file}.new {env_file}""",
        ],
    )
files.file(
    name='Keep the environment file for root alone',
    path=env_file,
    user='root',
    group='root',
    mode='600',
)
files.line(
    name="Trust the site's host name",
    path=env_file,
    line='TRUSTED_HOSTS=.*',
    replace=f'TRUSTED_HOSTS={domain}',
)

files.directory(name='Add the releases folder', path=f'/srv/app-deploy/{env}/releases', mode='755')
files.directory(
    name='Add the uploads folder, where deploy puts releases',
    path=f'/srv/app-deploy/{env}/uploads',
    user='deploy',
    group='deploy',
    mode='700',
)
files.put(
    name='Install app-deploy-release, which installs and switches releases',
    src='app-deploy-release',
    dest='/usr/local/sbin/app-deploy-release',
    mode='755',
)

units = [
    files.put(
        name=f'Install the systemd {unit}',
        src=f'app-deploy@.{unit}',
        dest=f'/etc/systemd/system/app-deploy@.{unit}',
        mode='644',
    )
    for unit in ('service', 'socket')
]
if any(unit.will_change for unit in units):
    systemd.daemon_reload(name='Make systemd read them')
systemd.service(
    name="Open the app's socket, now and at boot",
    service=f'app-deploy@{env}.socket',
    running=True,
    enabled=True,
)
# Started by the first deploy, which makes /srv/app-deploy/ENV/current; then at boot.
systemd.service(
    name='Start the app at boot',
    service=f'app-deploy@{env}.service',
    running=None,
    enabled=True,
)

if certificate == SELF_SIGNED and not host.get_fact(File, path=f'{SELF_SIGNED}/privkey.pem'):
    server.shell(
        name='Make a self-signed certificate',
        commands=[
            f'install -d -m 700 {SELF_SIGNED}',
            'openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'
            f' -days 365 -subj /CN={domain} -addext subjectAltName=DNS:{domain}'
            f' -keyout {SELF_SIGNED}/privkey.pem -out {SELF_SIGNED}/fullchain.pem 2>/dev/null',
        ],
    )
site = [
    files.put(
        name='Install the TLS settings that each block of the site includes',
        src='nginx-tls.conf',
        dest='/etc/nginx/snippets/app-deploy-tls.conf',
        mode='644',
    ),
    files.template(
        name='Install the nginx site',
        src='nginx.conf',
        dest='/etc/nginx/sites-available/app-deploy',
        mode='644',
        env=env,
        domain=domain,
        certificate=certificate,
        monitor=host.data.monitor,  # which alone may read the app's metrics
    ),
    files.link(
        name='Enable it',
        path='/etc/nginx/sites-enabled/app-deploy',
        target='/etc/nginx/sites-available/app-deploy',
    ),
    files.link(
        name="Disable nginx's default site",
        path='/etc/nginx/sites-enabled/default',
        present=False,
    ),
    files.directory(name="Add certbot's webroot", path='/var/www/letsencrypt', mode='755'),
]
if any(change.will_change for change in site):
    server.shell(name='Check the nginx configuration', commands=['nginx -t -q'])
    systemd.service(name='Reload nginx', service='nginx.service', reloaded=True)

local.include('access.py')
local.include('backups.py')
local.include('monitoring.py')
