"""What every server gets, the backup server too: ssh with keys alone, and a firewall.

provision.py and backup_server.py include it (pyinfra's local.include).
"""

from pyinfra import host
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import files, server, systemd

sshd = files.template(
    name='Let in keys alone over ssh, and root with a key alone',
    src='sshd.conf',
    dest='/etc/ssh/sshd_config.d/00-app-deploy.conf',
    mode='644',
)
if sshd.will_change:
    server.shell(name="Check sshd's settings", commands=['sshd -t'])
    systemd.service(name='Reload sshd', service='ssh.service', reloaded=True)

if not host.data.monitor:
    raise DeployError('set MONITOR_HOST: the server that watches the others (monitor_server.py)')
firewall = files.template(
    name="Install the firewall rules: ssh, HTTP and HTTPS where a site is, the exporters'",
    src='nftables.conf',
    dest='/etc/nftables.conf',
    mode='755',
    site=host.data.env in ('staging', 'production'),
    monitor=host.data.monitor,
)
systemd.service(
    name='Load them, now and at boot',
    service='nftables.service',
    running=True,
    enabled=True,
    restarted=firewall.will_change,
)
