"""What the monitoring server reads on each server: access.py includes it, so every server.

node_exporter on every server: the machine, its disks, and systemd's units (a failed
one shows). On the database servers also postgres_exporter, as a role that may read
PostgreSQL's statistics and nothing else, and the backups' freshness, which
app-deploy-backup writes for node_exporter every five minutes. The exporters listen on
the server's private address, and the firewall lets the monitoring server alone in.
The journal is kept on disk, within a size.
"""

import io

from pyinfra import host
from pyinfra.operations import apt, files, postgres, server, systemd

address = host.data.address  # the private one, from deploy/inventory.py
database_server = host.data.env in ('staging', 'production')

journald = files.put(
    name='Keep the journal on disk, in 500 MB at most',
    src=io.StringIO('[Journal]\nStorage=persistent\nSystemMaxUse=500M\n'),
    dest='/etc/systemd/journald.conf.d/app-deploy.conf',
    mode='644',
)
systemd.service(
    name='Restart journald, which reads it at start',
    service='systemd-journald.service',
    restarted=journald.will_change,
)

apt.packages(
    name='Install node_exporter' + (' and postgres_exporter' if database_server else ''),
    packages=['prometheus-node-exporter']
    + (['prometheus-postgres-exporter'] if database_server else []),
    no_recommends=True,
    update=True,
    cache_time=24 * 3600,
)
node = files.put(
    name="node_exporter's options: systemd's units, the textfile folder, the private address",
    src=io.StringIO(
        'ARGS="--collector.systemd'
        ' --collector.textfile.directory=/var/lib/prometheus/node-exporter'
        f' --web.listen-address={address}:9100"\n'
    ),
    dest='/etc/default/prometheus-node-exporter',
    mode='644',
)
systemd.service(
    name='Start node_exporter, now and at boot',
    service='prometheus-node-exporter.service',
    running=True,
    enabled=True,
    restarted=node.will_change,
)

if database_server:
    postgres.role(
        name="Add the exporter's role: it may read the statistics (pg_monitor), no more",
        role='prometheus',
        login=True,
        _sudo=True,
        _sudo_user='postgres',
    )
    server.shell(
        name='Grant it pg_monitor',
        commands=["runuser -u postgres -- psql -qX -c 'GRANT pg_monitor TO prometheus'"],
    )
    exporter = files.put(
        name="postgres_exporter's options: the local socket as prometheus (peer), the address",
        src=io.StringIO(
            "DATA_SOURCE_NAME='host=/run/postgresql user=prometheus dbname=postgres'\n"
            f'ARGS="--web.listen-address={address}:9187"\n'
        ),
        dest='/etc/default/prometheus-postgres-exporter',
        mode='640',
    )
    systemd.service(
        name='Start postgres_exporter, now and at boot',
        service='prometheus-postgres-exporter.service',
        running=True,
        enabled=True,
        restarted=exporter.will_change,
    )
    units = [
        files.put(
            name=f"Install the systemd {unit} of the backups' freshness",
            src=f'app-deploy-backup-status@.{unit}',
            dest=f'/etc/systemd/system/app-deploy-backup-status@.{unit}',
            mode='644',
        )
        for unit in ('service', 'timer')
    ]
    if any(unit.will_change for unit in units):
        systemd.daemon_reload(name='Make systemd read them')
    systemd.service(
        name='Start its timer, now and at boot',
        service=f'app-deploy-backup-status@{host.data.env}.timer',
        running=True,
        enabled=True,
    )
