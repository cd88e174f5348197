"""Make a fresh Debian 13 server the one that watches the others. Run it after the others:

    pyinfra inventory.py monitor_server.py --limit monitor

Prometheus scrapes every server's exporters over the private addresses and probes each
site from outside; its rules (prometheus/alerts.yml, checked by promtool before they
are used) decide what is wrong, and Alertmanager sends it by mail through your relay:
ALERT_SMTP (host:port), ALERT_FROM and ALERT_TO; the relay's password, if it wants one,
in deploy/secrets/smtp-password. DEAD_MANS_SWITCH_URL, if set, is pinged by the
always-firing Watchdog alert, so that a service outside knows this server is alive.
Prometheus and Alertmanager listen on this server alone: reach them through ssh
(README).
"""

import io
import os
from pathlib import Path

from pyinfra import host, inventory, local
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import apt, files, server, systemd

if host.data.env != 'monitor':
    raise DeployError(f'monitor_server.py is for the monitoring server, not {host.data.env}')
missing = [name for name in ('ALERT_SMTP', 'ALERT_FROM', 'ALERT_TO') if not os.environ.get(name)]
if missing:
    raise DeployError(f'set {", ".join(missing)}: where the alerts are mailed (README)')
smtp_password = Path('secrets/smtp-password')
dead_mans_switch = os.environ.get('DEAD_MANS_SWITCH_URL')
servers = [h.data for h in inventory if h.data.env != 'monitor'] + [host.data]
sites = [data for data in servers if data.env in ('staging', 'production')]

# The firewall first: the packages below start their services on every address.
apt.packages(
    name='Install nftables, and curl to ask Prometheus from the shell',
    packages=['nftables', 'curl'],
    no_recommends=True,
    update=True,
    cache_time=24 * 3600,
)
local.include('access.py')
apt.packages(
    name='Install Prometheus, Alertmanager and the blackbox exporter',
    packages=['prometheus', 'prometheus-alertmanager', 'prometheus-blackbox-exporter'],
    no_recommends=True,
)

# Each file goes in beside the one in use, is checked, and only then replaces it.
CHECKS = {
    'prometheus.yml': 'promtool check config --syntax-only',
    'app-deploy-alerts.yml': 'promtool check rules',
    'alertmanager.yml': 'amtool check-config',
    'blackbox.yml': 'prometheus-blackbox-exporter --config.check --config.file',
}
SERVICES = {
    'prometheus.yml': 'prometheus',
    'app-deploy-alerts.yml': 'prometheus',
    'alertmanager.yml': 'prometheus-alertmanager',
    'blackbox.yml': 'prometheus-blackbox-exporter',
}
secrets = [
    files.put(
        name="Install the relay's password, for Alertmanager alone",
        src=str(smtp_password) if smtp_password.exists() else io.StringIO(''),
        dest='/etc/prometheus/alertmanager-smtp-password',
        user='prometheus',
        group='prometheus',
        mode='600',
    ),
    files.put(
        name="Install the dead man's switch's address, for Alertmanager alone",
        src=io.StringIO(f'{dead_mans_switch or ""}\n'),
        dest='/etc/prometheus/alertmanager-dead-mans-switch',
        user='prometheus',
        group='prometheus',
        mode='600',
    ),
]
changed = set()
for name, source, template in [
    ('prometheus.yml', 'prometheus.yml', {'servers': servers, 'sites': sites}),
    ('app-deploy-alerts.yml', 'prometheus/alerts.yml', None),
    (
        'alertmanager.yml',
        'alertmanager.yml',
        {
            'smtp': os.environ['ALERT_SMTP'],
            'sender': os.environ['ALERT_FROM'],
            'to': os.environ['ALERT_TO'],
            'smtp_password': smtp_password.exists(),
            'dead_mans_switch': bool(dead_mans_switch),
        },
    ),
    ('blackbox.yml', 'blackbox.yml', None),
]:
    new = f'/etc/prometheus/{name}.new'
    put = (
        files.template(name=f'Upload {name}', src=source, dest=new, mode='644', **template)
        if template
        else files.put(name=f'Upload {name}', src=source, dest=new, mode='644')
    )
    if put.will_change:
        server.shell(
            name=f'Check {name}, then use it',
            commands=[f'{CHECKS[name]} {new}', f'cp {new} /etc/prometheus/{name}'],
        )
        changed.add(SERVICES[name])
options = files.put(
    name="Prometheus's options: on this server alone, 30 days kept",
    src=io.StringIO(
        'ARGS="--web.listen-address=127.0.0.1:9090 --storage.tsdb.retention.time=30d"\n'
    ),
    dest='/etc/default/prometheus',
    mode='644',
)
alertmanager_options = files.put(
    name="Alertmanager's options: on this server alone, no cluster",
    src=io.StringIO('ARGS="--web.listen-address=127.0.0.1:9093 --cluster.listen-address="\n'),
    dest='/etc/default/prometheus-alertmanager',
    mode='644',
)
blackbox_options = files.put(
    name="The blackbox exporter's options: on this server alone",
    src=io.StringIO(
        'ARGS="--config.file=/etc/prometheus/blackbox.yml --web.listen-address=127.0.0.1:9115"\n'
    ),
    dest='/etc/default/prometheus-blackbox-exporter',
    mode='644',
)
systemd.service(
    name='Start Prometheus, now and at boot; it reads its files again on a reload',
    service='prometheus.service',
    running=True,
    enabled=True,
    restarted=options.will_change,
    reloaded='prometheus' in changed and not options.will_change,
)
for service, restart in [
    (
        'prometheus-alertmanager',
        'prometheus-alertmanager' in changed
        or alertmanager_options.will_change
        or any(secret.will_change for secret in secrets),
    ),
    (
        'prometheus-blackbox-exporter',
        'prometheus-blackbox-exporter' in changed or blackbox_options.will_change,
    ),
]:
    systemd.service(
        name=f'Start {service}, now and at boot',
        service=f'{service}.service',
        running=True,
        enabled=True,
        restarted=restart,
    )

local.include('monitoring.py')
