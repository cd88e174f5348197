"""Stand-in servers for Part 6: Debian 12 containers that boot systemd, reached over ssh.

    python3 -m tools.testserver staging [production] [--key ~/.ssh/app_deploy.pub]

boots each named server, prints its ``ssh`` line and runs until Ctrl-C (or SIGTERM,
SIGHUP); then it halts them and removes all it made. In Python::

    with testserver.running('staging') as host:
        subprocess.run([*host.ssh_command, 'systemctl is-system-running --wait'])

How a server is made (as root, on Linux; apt packages: debootstrap systemd-container
nftables zstd iproute2 openssh-client):

- Its root filesystem: ``debootstrap --variant=minbase`` of Debian 12 with systemd, sshd
  and python3, built once (a minute or two) and kept as a zstd tarball (135 MB) in
  ``~/.cache/app-deploy/testserver/``. That folder outlives ``.nox/`` and the clone, so a
  fresh clone or ``rm -rf .nox`` does not build it again. Each server unpacks a copy
  (3-5 s) into ``/tmp/app-deploy-testserver-<pid>-<name>/`` and boots to ssh in about 1 s.
- Its network: a network namespace of its own, ``app-deploy-ts-<pid>-<name>``, with
  one end of a veth pair in it (``host0``, as systemd-nspawn names it) and the other on
  this machine (alias ``app-deploy-testserver <pid> <name>``), on a /24 of 10.213.0.0/16
  that nothing here uses. We make the namespace ourselves rather than let
  ``systemd-nspawn --network-veth`` do it, so that the address is set before boot and
  every interface and firewall table exists under a name we chose and delete, not under
  nspawn's shared ones (``io.systemd.nat``).
- Its way out: only to Debian's package mirror (the one in this machine's apt sources),
  port 80 or 443, through this machine (``ip_forward`` and a masquerade rule in an nft
  table of its own, ``app_deploy_ts_<pid>_<name>``). It has no DNS: the mirror's names
  are pinned in its ``/etc/hosts``. Nothing else leaves; two servers cannot reach each
  other.
- Its keys: a new ed25519 host key made in its root filesystem, written to a
  ``known_hosts`` file for its address (so ssh checks it: ``StrictHostKeyChecking=yes``),
  and an ssh key pair made for the run, or the reader's public key.

A run killed outright (SIGKILL) leaves all this behind; the next run removes it.
"""

import argparse
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tools import run

SUITE = 'bookworm'  # Debian 12
PACKAGES = 'systemd,systemd-sysv,dbus,openssh-server,python3,python3-venv,sudo,iproute2,'
PACKAGES += 'ca-certificates'
# Owners, modes, extended attributes and ACLs exactly as they are (ids, not names).
TAR = ['tar', '--numeric-owner', '--xattrs', '--xattrs-include=*', '--acls']
# Bump when the image is prepared differently, so that a cached tarball is rebuilt.
IMAGE_VERSION = 1
CACHE = Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'app-deploy'
CACHE /= 'testserver'
DEFAULT_MIRROR = 'http://deb.debian.org/debian'
DEFAULT_SECURITY = 'http://deb.debian.org/debian-security'
SUBNETS = ipaddress.ip_network('10.213.0.0/16')  # one /24 per server: .1 here, .2 there
NETWORK_LOCK = Path('/run/lock/app-deploy-testserver.lock')
# Holds ip_forward's value before the first server turned it on, until the last one ends.
FORWARD_MARK = Path('/run/app-deploy-testserver.ip_forward')
NAME = re.compile(r'[a-z][a-z0-9]{0,15}')
NETNS = re.compile(r'app-deploy-ts-(\d+)-([a-z][a-z0-9]*)')
REBOOTED = 133  # systemd-nspawn's exit status when the container reboots
USER = 'root'  # as on a new cloud server (Part 1)
NEEDS = {
    'debootstrap': 'debootstrap',
    'systemd-nspawn': 'systemd-container',
    'nft': 'nftables',
    'zstd': 'zstd',
    'ip': 'iproute2',
    'ssh': 'openssh-client',
    'ssh-keygen': 'openssh-client',
}


class TestServerError(Exception):
    """A stand-in server cannot be made here; the message says why, in one line."""


def check_machine():
    """Raise TestServerError unless this machine can run stand-in servers."""
    if sys.platform != 'linux' or os.geteuid() != 0:
        raise TestServerError(
            'stand-in servers need root on Linux (systemd-nspawn, network namespaces)'
        )
    missing = sorted({package for tool, package in NEEDS.items() if not shutil.which(tool)})
    if missing:
        raise TestServerError(f'stand-in servers need: apt-get install {" ".join(missing)}')


def sh(*args, **kwargs):
    """Run a command, check it, return its output; a failure says which command."""
    args = [str(arg) for arg in args]
    try:
        return subprocess.run(args, check=True, text=True, capture_output=True, **kwargs).stdout
    except subprocess.CalledProcessError as error:
        raise TestServerError(f'{shlex.join(args)}: {error.stderr.strip()}') from None


@contextlib.contextmanager
def locked(path, waiting):
    """Hold an exclusive lock on the file ``path``; say ``waiting`` while another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'a') as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(waiting, file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- The root filesystem, built once ---------------------------------------------------


def apt_sources():
    """(URI, suite) of each ``deb`` entry in this machine's apt sources (both formats)."""
    entries = []
    folder = Path('/etc/apt/sources.list.d')
    for path in [Path('/etc/apt/sources.list'), *sorted(folder.glob('*.list'))]:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = re.sub(r'\[[^]]*\]', '', line.split('#')[0]).split()
                if len(words) >= 3 and words[0] == 'deb':
                    entries.append((words[1], words[2]))
    for path in sorted(folder.glob('*.sources')):
        for stanza in re.split(r'\n\s*\n', path.read_text()):
            fields = dict(re.findall(r'^(\w[\w-]*):[ \t]*(.*)$', stanza, re.MULTILINE))
            if 'deb' in fields.get('Types', '').split() and fields.get('Enabled') != 'no':
                uris, suites = fields.get('URIs', '').split(), fields.get('Suites', '').split()
                entries += [(uri, suite) for uri in uris for suite in suites]
    return entries


def mirrors():
    """Debian's mirror and security mirror: this machine's if it runs Debian 12, else
    deb.debian.org's."""
    found = dict((suite, uri.rstrip('/')) for uri, suite in reversed(apt_sources()))
    return found.get(SUITE, DEFAULT_MIRROR), found.get(f'{SUITE}-security', DEFAULT_SECURITY)


def image():
    """The cached root filesystem tarball, built first if there is none."""
    key = hashlib.sha256(f'{SUITE} {PACKAGES} {IMAGE_VERSION}'.encode()).hexdigest()[:12]
    tarball = CACHE / f'debian-{SUITE}-{key}.tar.zst'
    with locked(CACHE / 'build.lock', 'Waiting for another run that builds the root filesystem'):
        if not tarball.exists():
            build(tarball)
    return tarball


def build(tarball):
    """debootstrap a root filesystem, prepare it for copies, and pack it into ``tarball``."""
    mirror, _ = mirrors()
    print(f'Building the root filesystem of the stand-in servers from {mirror}', file=sys.stderr)
    print(f'(a minute or two, once; kept in {tarball})', file=sys.stderr, flush=True)
    for left in CACHE.glob('build-*'):  # by a build that was killed (we hold the lock)
        remove_build(left)
    rootfs = Path(tempfile.mkdtemp(prefix='build-', dir=CACHE))
    partial = tarball.with_suffix('.partial')
    try:
        started = time.monotonic()
        debootstrap(rootfs, mirror)
        print(f'debootstrap took {time.monotonic() - started:.0f} s', file=sys.stderr)
        started = time.monotonic()
        # What each copy gets its own of: host keys, machine id (made at first boot when
        # the file is empty), resolv.conf (debootstrap copied ours). And no package lists.
        for path in rootfs.glob('etc/ssh/ssh_host_*'):
            path.unlink()
        (rootfs / 'etc/machine-id').write_text('')
        (rootfs / 'var/lib/dbus/machine-id').unlink(missing_ok=True)
        (rootfs / 'etc/resolv.conf').unlink(missing_ok=True)
        shutil.rmtree(rootfs / 'var/lib/apt/lists', ignore_errors=True)
        (rootfs / 'var/lib/apt/lists/partial').mkdir(parents=True)
        sh('chroot', str(rootfs), 'systemctl', 'enable', 'systemd-networkd')
        rootfs.chmod(0o755)  # mkdtemp made it 0700; it becomes the container's /
        sh(*TAR, '-I', 'zstd -T0 -3', '-C', rootfs, '-cf', partial, '.')
        partial.rename(tarball)
        print(f'prepared and packed in {time.monotonic() - started:.0f} s', file=sys.stderr)
        for old in CACHE.glob('debian-*.tar.zst'):  # images of earlier versions
            if old != tarball:
                old.unlink()
    finally:
        remove_build(rootfs)
        partial.unlink(missing_ok=True)


def debootstrap(rootfs, mirror):
    """Run debootstrap in a process group of its own, stopped whole if we are stopped."""
    command = ['debootstrap', '--variant=minbase', f'--include={PACKAGES}', SUITE, rootfs, mirror]
    process = subprocess.Popen(
        [str(arg) for arg in command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output = process.communicate()[0]
    finally:
        if process.poll() is None:  # Ctrl-C or SIGTERM: its trap unmounts what it mounted
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
    if process.returncode:
        raise TestServerError(f'debootstrap failed:\n{output[-2000:]}')


def remove_build(rootfs):
    """Delete a build folder, unmounting first what a stopped debootstrap left mounted in it
    (/proc, /dev/pts...): never delete through a mount."""
    for point in reversed(mounts_in(rootfs)):
        subprocess.run(['umount', '--lazy', point], check=False)
    if mounts_in(rootfs):
        print(
            f'Not deleting {rootfs}: {", ".join(mounts_in(rootfs))} still mounted', file=sys.stderr
        )
    else:
        shutil.rmtree(rootfs, ignore_errors=True)


def mounts_in(folder):
    with open('/proc/self/mounts') as mounts:
        points = [line.split()[1] for line in mounts]
    return [point for point in points if point.startswith(f'{folder}/')]


# --- One server ----------------------------------------------------------------------


@dataclass
class Host:
    """A running stand-in server, and how to reach it over ssh."""

    name: str
    address: str
    key: Path | None  # the private key; None when the reader named a key without one next to it
    known_hosts: Path  # holds this server's host key alone
    folder: Path
    veth: str  # its end on this machine
    user: str = USER
    process: subprocess.Popen | None = field(default=None, repr=False)  # systemd-nspawn
    stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    timings: dict = field(default_factory=dict)  # seconds: restore, boot to ssh, halt

    @property
    def ssh_options(self):
        """ssh's options for this server: its pinned host key, and the run's key."""
        options = ['-o', f'UserKnownHostsFile={self.known_hosts}']
        options += ['-o', 'StrictHostKeyChecking=yes']  # refuse any other key, never add one
        if self.key:
            options += ['-i', str(self.key), '-o', 'IdentitiesOnly=yes']
        return options

    @property
    def ssh_command(self):
        """The ``ssh`` command line (a list) that logs in; append a command to run one."""
        return ['ssh', *self.ssh_options, f'{self.user}@{self.address}']

    @property
    def ssh_line(self):
        return shlex.join(self.ssh_command)

    @property
    def control_path(self):
        """The socket of the one ssh connection that this user and key keep open to it.

        The servers limit new ssh connections per address (deploy/nftables.conf), as
        a real one does; a run's commands share one connection each, so they never
        meet that limit. The key is in the name so that no other key rides on it.
        """
        tag = hashlib.sha256(f'{self.user} {self.key}'.encode()).hexdigest()[:16]
        return self.folder / f'ssh-{tag}'

    def ssh(self, command, check=True, timeout=120, **kwargs):
        """Run the shell command ``command`` on the server; return the CompletedProcess."""
        *ssh, login = self.ssh_command
        ssh += ['-o', 'BatchMode=yes', '-o', 'ControlMaster=auto', '-o', 'ControlPersist=60']
        ssh += ['-o', f'ControlPath={self.control_path}', '-o', 'ServerAliveInterval=5']
        return subprocess.run(
            [*ssh, login, command],
            check=check,
            text=True,
            capture_output=True,
            timeout=timeout,
            **kwargs,
        )


def names(pid, name):
    """The names of what the server ``name`` of the process ``pid`` makes."""
    return {
        'folder': Path(tempfile.gettempdir()) / f'app-deploy-testserver-{pid}-{name}',
        'netns': f'app-deploy-ts-{pid}-{name}',
        'table': f'app_deploy_ts_{pid}_{name}',
        'alias': f'app-deploy-testserver {pid} {name}',
    }


@contextlib.contextmanager
def running(name, public_key=None):
    """Boot the stand-in server ``name``; yield its Host; halt it and remove all it made.

    ``public_key``: the path of the reader's public key, let in instead of a key made
    for the run (ssh then uses the private key next to it, when there is one).
    """
    if not NAME.fullmatch(name):
        raise TestServerError(f'a server name is lower case letters and digits: not {name!r}')
    check_machine()
    sweep_stale()
    tarball = image()
    made = names(os.getpid(), name)
    folder, rootfs = made['folder'], made['folder'] / 'rootfs'
    if folder.exists():
        raise TestServerError(f'this process already runs a server named {name}')
    host = None
    try:
        folder.mkdir(mode=0o700)
        rootfs.mkdir(mode=0o755)
        started = time.monotonic()
        sh(*TAR, '-I', 'zstd', '-C', rootfs, '-xpf', tarball)
        restored = time.monotonic() - started
        veth, address, gateway, mirror_hosts = connect(made)
        key, known_hosts = keys(folder, rootfs, name, address, public_key)
        configure(rootfs, name, address, gateway, mirror_hosts)
        host = Host(name, address, key, known_hosts, folder, veth)
        started = time.monotonic()
        boot(host, made['netns'])
        wait_for_ssh(host)
        host.timings.update(restore=restored, boot_to_ssh=time.monotonic() - started)
        yield host
    finally:
        teardown(os.getpid(), name, host)


def connect(made):
    """Make the server's namespace, veth pair and firewall table.

    Returns the veth's name here, the server's address, this machine's address on the
    veth (the server's gateway) and the {host name: address} of the mirrors it may reach.
    Under a lock, so that two runs do not pick the same free subnet.
    """
    netns, alias = made['netns'], made['alias']
    with locked(NETWORK_LOCK, 'Waiting for another run that sets up a stand-in server'):
        subnet = free_subnet()
        gateway, address = (str(subnet[1]), str(subnet[2]))
        veth = f'adts{subnet.network_address.packed[2]}'  # at most 15 characters
        sh('ip', 'netns', 'add', netns)
        sh('ip', 'link', 'add', veth, 'type', 'veth', 'peer', 'name', 'host0', 'netns', netns)
        sh('ip', 'link', 'set', veth, 'alias', alias)
        sh('ip', 'address', 'add', f'{gateway}/{subnet.prefixlen}', 'dev', veth)
        sh('ip', 'link', 'set', veth, 'up')
    mirror_hosts = resolve_mirrors()
    allow_mirror(made['table'], address, sorted(set(mirror_hosts.values())))
    return veth, address, gateway, mirror_hosts


def free_subnet():
    """The first /24 of SUBNETS that overlaps no address or route on this machine."""
    used = [
        ipaddress.ip_interface(f'{info["local"]}/{info["prefixlen"]}').network
        for link in json.loads(sh('ip', '-json', '-4', 'address'))
        for info in link.get('addr_info', [])
    ]
    used += [
        ipaddress.ip_network(route['dst'], strict=False)
        for route in json.loads(sh('ip', '-json', '-4', 'route', 'show', 'table', 'all'))
        if route.get('dst', 'default') != 'default'
    ]
    for subnet in list(SUBNETS.subnets(new_prefix=24))[1:]:
        if not any(subnet.overlaps(network) for network in used):
            return subnet
    raise TestServerError(f'no free /24 left in {SUBNETS} for a stand-in server')


def resolve_mirrors():
    """{host name: IPv4 address} of the Debian mirrors, resolved here."""
    found = {}
    for url in mirrors():
        hostname = urlsplit(url).hostname
        try:
            found[hostname] = socket.getaddrinfo(hostname, 80, socket.AF_INET)[0][4][0]
        except OSError as error:
            raise TestServerError(
                f'cannot resolve the Debian mirror {hostname}: {error}'
            ) from None
    return found


def allow_mirror(table, address, mirror_addresses):
    """Let ``address`` reach the mirror (ports 80 and 443) through this machine, only that.

    One nft table holds all the rules; deleting it removes them all. Forwarding is
    turned on for the machine: FORWARD_MARK keeps its old value for the last server
    to put back.
    """
    forward = Path('/proc/sys/net/ipv4/ip_forward')
    with locked(NETWORK_LOCK, 'Waiting for another run that sets up a stand-in server'):
        if forward.read_text().strip() != '1' and not FORWARD_MARK.exists():
            FORWARD_MARK.write_text(forward.read_text())
            forward.write_text('1')
    mirror = ', '.join(mirror_addresses)
    # Forwarded: the server's connections to the mirror and their replies pass; anything
    # else from or to it is dropped (this machine's own ssh to it is not forwarded).
    rules = f"""
        table ip {table} {{
            chain forward {{
                type filter hook forward priority filter; policy accept;
                ip saddr {address} ip daddr {{ {mirror} }} tcp dport {{ 80, 443 }} accept
                ip daddr {address} ct state established,related accept
                ip saddr {address} drop
                ip daddr {address} drop
            }}
            chain postrouting {{
                type nat hook postrouting priority srcnat; policy accept;
                ip saddr {address} ip daddr {{ {mirror} }} masquerade
            }}
        }}
    """
    sh('nft', '-f', '-', input=rules)


def keys(folder, rootfs, name, address, public_key):
    """Make the server's host key and a known_hosts file that pins it; let a key log in.

    Returns (private key path or None, known_hosts path).
    """
    host_key = rootfs / 'etc/ssh/ssh_host_ed25519_key'
    keygen(host_key, f'root@{name}')
    algorithm, blob, *_ = host_key.with_suffix('.pub').read_text().split()
    known_hosts = folder / 'known_hosts'
    known_hosts.write_text(f'{address} {algorithm} {blob}\n')
    if public_key:
        public_key = Path(public_key).expanduser()
        try:
            authorized = public_key.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise TestServerError(f'cannot read the public key {public_key}: {error}') from None
        if not authorized.startswith(('ssh-', 'ecdsa-', 'sk-')):
            raise TestServerError(f'{public_key} is not a public key: name the .pub file')
        private = public_key.with_suffix('')
        key = private if public_key.suffix == '.pub' and private.exists() else None
    else:
        key = folder / 'id_ed25519'
        keygen(key, f'app-deploy-testserver-{name}')
        authorized = key.with_suffix('.pub').read_text()
    ssh_dir = rootfs / 'root/.ssh'
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / 'authorized_keys').write_text(authorized)
    (ssh_dir / 'authorized_keys').chmod(0o600)
    return key, known_hosts


def keygen(path, comment):
    """A new ed25519 key pair, without a passphrase: ``path`` and ``path``.pub."""
    sh('ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', path)


def configure(rootfs, name, address, gateway, mirror_hosts):
    """Write the server's name, network, apt sources and sshd settings into ``rootfs``."""
    etc = rootfs / 'etc'
    (etc / 'hostname').write_text(f'{name}\n')
    pinned = ''.join(f'{ip} {hostname}\n' for hostname, ip in mirror_hosts.items())
    (etc / 'hosts').write_text(
        f'127.0.0.1 localhost\n127.0.1.1 {name}\n::1 localhost ip6-localhost ip6-loopback\n'
        f'# The Debian mirror, resolved on the machine that runs this server: it has no DNS.\n'
        f'{pinned}'
    )
    # Without LinkLocalAddressing=no and IPv6AcceptRA=no, boot waits 13 s for IPv6.
    (etc / 'systemd/network/10-host0.network').write_text(
        f'[Match]\nName=host0\n\n[Network]\nAddress={address}/24\nGateway={gateway}\n'
        f'LinkLocalAddressing=no\nIPv6AcceptRA=no\n'
    )
    mirror, security = mirrors()
    (etc / 'apt/sources.list').write_text(
        f'deb {mirror} {SUITE} main\ndeb {mirror} {SUITE}-updates main\n'
        f'deb {security} {SUITE}-security main\n'
    )
    (etc / 'ssh/sshd_config.d/testserver.conf').write_text(
        'HostKey /etc/ssh/ssh_host_ed25519_key\n'
    )
    # What many providers' images ship: passwords, and root with one. Provisioning must
    # turn both off (stage 06 on); the stand-ins' root has no password to try.
    (etc / 'ssh/sshd_config.d/50-cloud-init.conf').write_text(
        'PasswordAuthentication yes\nPermitRootLogin yes\n'
    )


def boot(host, netns):
    """Start systemd-nspawn for ``host``; restart it while the container reboots.

    In a session of its own, so that Ctrl-C in the terminal reaches us, not it: we
    halt it with SIGTERM (a clean poweroff). Its console goes to console.log.
    """
    command = [
        *('systemd-nspawn', '--boot', f'--directory={host.folder / "rootfs"}'),
        *(f'--machine={host.name}', f'--network-namespace-path=/run/netns/{netns}'),
        # nspawn grants CAP_NET_ADMIN only with the networks it makes itself; networkd
        # needs it (it skips without), and it reaches no further than the namespace.
        '--capability=CAP_NET_ADMIN',
        # No systemd-machined or scope unit: this machine may have no systemd as PID 1.
        *('--register=no', '--keep-unit'),
        # Leave the image's /etc/resolv.conf (none), time zone and journal as they are.
        *('--resolv-conf=off', '--timezone=off', '--link-journal=no'),
        '--console=read-only',
    ]

    def start():
        with open(host.folder / 'console.log', 'ab') as log:
            host.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (host.folder / 'nspawn.pid').write_text(str(host.process.pid))

    def restart_on_reboot():
        while host.process.wait() == REBOOTED:
            with host.lock:  # not while halt() stops it
                if host.stopping.is_set():
                    return
                start()

    start()
    threading.Thread(target=restart_on_reboot, daemon=True).start()


def wait_for_ssh(host, timeout=60):
    """Wait until sshd on ``host`` answers with its banner."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.process.poll() not in (None, REBOOTED):
            break
        with contextlib.suppress(OSError):
            with socket.create_connection((host.address, 22), timeout=1) as sock:
                if sock.recv(64).startswith(b'SSH-'):
                    return
        time.sleep(0.1)
    log = (host.folder / 'console.log').read_text(errors='replace').splitlines()[-15:]
    raise TestServerError(
        f'{host.name} did not answer on {host.address}:22 within {timeout} s; its console '
        f'ended with:\n' + '\n'.join(log)
    )


# --- Halting and removing -------------------------------------------------------------


def teardown(pid, name, host=None, timeout=30):
    """Halt the server ``name`` of the process ``pid`` and remove all it made.

    Safe to call on a server half made, or on what a killed run left. Says what it
    could not remove, and goes on.
    """
    made = names(pid, name)
    stop_shared_ssh(made['folder'])
    if host and host.process:
        halt(host, timeout)
    else:  # a killed run's: stop its nspawn by the PID it wrote, if that is still nspawn
        with contextlib.suppress(OSError, ValueError):
            pidfile = made['folder'] / 'nspawn.pid'
            run._stop(int(pidfile.read_text()), str(made['folder']), signal.SIGTERM)
    for what, action, *args in [
        ('processes', kill_all, made['netns']),
        ('nft table', delete_table, made['table']),
        ('veth', delete_veths, made['alias']),
        ('network namespace', delete_netns, made['netns']),
        ('folder', delete_folder, made['folder']),
        ('ip_forward setting', restore_forwarding),
    ]:
        try:
            action(*args)
        except (OSError, TestServerError) as error:
            print(f'testserver {name}: could not remove its {what}: {error}', file=sys.stderr)


def stop_shared_ssh(folder):
    """Stop the ssh connections that Host.ssh left open to the server, by their PIDs."""
    for control in folder.glob('ssh-*'):
        ask = ['ssh', '-o', f'ControlPath={control}', '-O']
        check = subprocess.run([*ask, 'check', 'server'], capture_output=True, text=True)
        found = re.search(r'\(pid=(\d+)\)', check.stderr)
        if found:
            subprocess.run([*ask, 'exit', 'server'], capture_output=True, timeout=10)
            run._stop(int(found[1]), str(control), signal.SIGTERM)


def halt(host, timeout):
    """Power the server off (nspawn turns SIGTERM into a clean halt); kill it after ``timeout``."""
    started = time.monotonic()
    with host.lock:
        host.stopping.set()
    host.process.terminate()
    try:
        host.process.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f'testserver {host.name}: no halt in {timeout} s, killing it', file=sys.stderr)
        host.process.kill()
        host.process.wait()
    host.timings['halt'] = time.monotonic() - started


def kill_all(netns):
    """Kill what still runs in the namespace: it is all this server's (a container left
    running by an nspawn killed outright)."""
    for pid in netns_pids(netns):
        os.kill(int(pid), signal.SIGKILL)


def delete_netns(netns):
    if netns_exists(netns):
        sh('ip', 'netns', 'delete', netns)


def delete_veths(alias):
    for veth in veths(alias):
        sh('ip', 'link', 'delete', veth)


def delete_folder(folder):
    if folder.exists():
        shutil.rmtree(folder)


def netns_exists(netns):
    return netns in sh('ip', 'netns', 'list').split()


def netns_pids(netns):
    return sh('ip', 'netns', 'pids', netns).split() if netns_exists(netns) else []


def delete_table(table):
    if f'table ip {table}' in sh('nft', 'list', 'tables').splitlines():
        sh('nft', 'delete', 'table', 'ip', table)


def veths(alias):
    """The names of the interfaces here whose alias is ``alias``."""
    links = json.loads(sh('ip', '-json', 'link', 'show', 'type', 'veth'))
    return [link['ifname'] for link in links if link.get('ifalias') == alias]


def restore_forwarding():
    """Put ip_forward back as it was, when no stand-in server is left and no Podman
    bridge (containers forward through it too: stage 08's tests)."""
    with locked(NETWORK_LOCK, 'Waiting for another run that sets up a stand-in server'):
        links = [link['ifname'] for link in json.loads(sh('ip', '-json', 'link'))]
        if (
            FORWARD_MARK.exists()
            and not any(NETNS.fullmatch(n) for n in sh('ip', 'netns', 'list').split())
            and not any(re.fullmatch(r'(cni-)?podman\d+', link) for link in links)
        ):
            Path('/proc/sys/net/ipv4/ip_forward').write_text(FORWARD_MARK.read_text())
            FORWARD_MARK.unlink()


def sweep_stale():
    """Remove what the servers of killed runs left: by the names, for a PID that is gone."""
    found = set()
    for line in sh('ip', 'netns', 'list').splitlines():
        if match := NETNS.fullmatch(line.split()[0] if line.split() else ''):
            found.add((int(match[1]), match[2]))
    for line in sh('nft', 'list', 'tables').splitlines():
        if match := re.fullmatch(r'table ip app_deploy_ts_(\d+)_([a-z][a-z0-9]*)', line):
            found.add((int(match[1]), match[2]))
    for path in Path(tempfile.gettempdir()).glob('app-deploy-testserver-*'):
        if match := re.fullmatch(r'app-deploy-testserver-(\d+)-([a-z][a-z0-9]*)', path.name):
            found.add((int(match[1]), match[2]))
    for pid, name in sorted(found):
        if not run.alive(pid):
            print(
                f'Removing the stand-in server {name} a killed run ({pid}) left', file=sys.stderr
            )
            teardown(pid, name)


# --- python3 -m tools.testserver ---------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python3 -m tools.testserver',
        description='Boot stand-in servers (Debian 12, systemd) until Ctrl-C, for Part 6.',
    )
    parser.add_argument('names', nargs='+', metavar='NAME', help='staging, production, ...')
    parser.add_argument(
        '--key', metavar='PUBLIC_KEY', help='let your key in, e.g. ~/.ssh/app_deploy.pub'
    )
    args = parser.parse_args(argv)
    run.stop_on_signals()  # SIGTERM and SIGHUP stop us as Ctrl-C does
    try:
        with contextlib.ExitStack() as stack:
            hosts = [stack.enter_context(running(name, args.key)) for name in args.names]
            for host in hosts:
                print(f'{host.name} is up at {host.address}. Log in with:\n    {host.ssh_line}')
            print('Ctrl-C stops the servers and removes them.', flush=True)
            while all(host.process.poll() in (None, REBOOTED) for host in hosts):
                time.sleep(0.5)
            print('A server powered off; stopping the others.', file=sys.stderr)
    except KeyboardInterrupt:
        print('Stopped; the servers are halted and removed.', file=sys.stderr)
    except TestServerError as error:
        sys.exit(f'testserver: {error}')


if __name__ == '__main__':
    main()
