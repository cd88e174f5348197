"""Stand-in servers for Part 6: Debian 13 containers that boot systemd, reached over ssh.

    python3 -m tools.standin staging [production] [--key ~/.ssh/app_deploy.pub]

boots each named server, prints its ``ssh`` line and runs until Ctrl-C (or SIGTERM,
SIGHUP); then it halts them and removes all it made. In Python::

    with standin.running('staging') as host:
        subprocess.run([*host.ssh_command, 'systemctl is-system-running --wait'])

How a server is made (as root, on Linux; apt packages: debootstrap systemd-container
nftables zstd iproute2 openssh-client):

- Its root filesystem: ``debootstrap --variant=minbase`` of Debian 13 with systemd, sshd
  and python3, built once (a minute or two) and kept as a zstd tarball (135 MB) in
  ``~/.cache/app-deploy/standin/``. That folder outlives ``.nox/`` and the clone, so a
  fresh clone or ``rm -rf .nox`` does not build it again. Each server unpacks a copy
  (3-5 s) into ``/tmp/app-deploy-standin-<pid>-<name>/`` and boots to ssh in about 1 s.
- Its network: a network namespace of its own, ``app-deploy-standin-<pid>-<name>``, with
  one end of a veth pair in it (``host0``, as systemd-nspawn names it) and the other on
  this machine (alias ``app-deploy-standin <pid> <name>``), on a /24 of 10.213.0.0/16
  that nothing here uses. We make the namespace ourselves rather than let
  ``systemd-nspawn --network-veth`` do it, so that the address is set before boot and
  every interface and firewall table exists under a name we chose and delete, not under
  nspawn's shared ones (``io.systemd.nat``).
- Its way out: only to Debian's package mirror (the one in this machine's apt sources),
  port 80 or 443, through this machine (``ip_forward`` and a masquerade rule in an nft
  table of its own, ``app_deploy_standin_<pid>_<name>``). It has no DNS: the mirror's names
  are pinned in its ``/etc/hosts``. Nothing else leaves; two servers cannot reach each
  other, until ``let_reach(client, server, port)`` opens that one port one way.
- Its keys: a new ed25519 host key made in its root filesystem, written to a
  ``known_hosts`` file for its address (so ssh checks it: ``StrictHostKeyChecking=yes``),
  and an ssh key pair made for the run, or the reader's public key.

A run killed outright (SIGKILL) leaves all this behind; the next run removes it.
"""

from tools.standin.host import (
    Host,
    cut_off,
    let_reach,
    power_cut,
    reaches,
    running,
    sweep_stale,
    teardown,
    wait_for_ssh,
)
from tools.standin.machine import StandinError, check_machine

__all__ = [
    'Host',
    'StandinError',
    'check_machine',
    'cut_off',
    'let_reach',
    'power_cut',
    'reaches',
    'running',
    'sweep_stale',
    'teardown',
    'wait_for_ssh',
]
