"""One stand-in server: boot it, reach it over ssh, halt it and remove all it made."""

import contextlib
import hashlib
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

from tools.processes import alive, stop_pid
from tools.standin.image import SUITE, TAR, image, mirrors
from tools.standin.machine import StandinError, check_machine, sh
from tools.standin.network import (
    NETNS,
    allow,
    connect,
    delete_netns,
    delete_table,
    delete_veths,
    netns_pids,
    restore_forwarding,
)

NAME = re.compile(r'[a-z][a-z0-9]{0,15}')
REBOOTED = 133  # systemd-nspawn's exit status when the container reboots
USER = 'root'  # as on a new cloud server (Part 1)


@dataclass
class Host:
    """A running stand-in server, and how to reach it over ssh."""

    name: str
    address: str
    key: Path | None  # the private key; None when the reader named a key without one next to it
    known_hosts: Path  # holds this server's host key alone
    folder: Path
    veth: str  # its end on this machine
    netns: str  # its network namespace
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
        ssh += ['-o', 'BatchMode=yes', '-o', 'ControlMaster=auto', '-o', 'ControlPersist=600']
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
        'folder': Path(tempfile.gettempdir()) / f'app-deploy-standin-{pid}-{name}',
        'netns': f'app-deploy-standin-{pid}-{name}',
        'table': f'app_deploy_standin_{pid}_{name}',
        'alias': f'app-deploy-standin {pid} {name}',
    }


@contextlib.contextmanager
def running(name, public_key=None, tarball=None):
    """Boot the stand-in server ``name``; yield its Host; halt it and remove all it made.

    ``public_key``: the path of the reader's public key, let in instead of a key made
    for the run (ssh then uses the private key next to it, when there is one).
    ``tarball``: the root filesystem to boot, if not Debian's as debootstrap made it
    (a provisioned server's image: tools/standin/provisioned.py).
    """
    if not NAME.fullmatch(name):
        raise StandinError(f'a server name is lower case letters and digits: not {name!r}')
    check_machine()
    sweep_stale()
    tarball = tarball or image()
    made = names(os.getpid(), name)
    folder, rootfs = made['folder'], made['folder'] / 'rootfs'
    if folder.exists():
        raise StandinError(f'this process already runs a server named {name}')
    host = None
    try:
        folder.mkdir(mode=0o700)
        rootfs.mkdir(mode=0o755)
        started = time.monotonic()
        sh(*TAR, '-I', 'zstd', '-C', rootfs, '-xpf', tarball)
        (rootfs / 'etc/machine-id').touch()  # empty: made at boot (an image has none)
        restored = time.monotonic() - started
        veth, address, gateway, mirror_hosts = connect(made)
        key, known_hosts = keys(folder, rootfs, name, address, public_key)
        configure(rootfs, name, address, gateway, mirror_hosts)
        host = Host(name, address, key, known_hosts, folder, veth, made['netns'])
        started = time.monotonic()
        boot(host)
        wait_for_ssh(host)
        host.timings.update(restore=restored, boot_to_ssh=time.monotonic() - started)
        yield host
    finally:
        teardown(os.getpid(), name, host)


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
            raise StandinError(f'cannot read the public key {public_key}: {error}') from None
        if not authorized.startswith(('ssh-', 'ecdsa-', 'sk-')):
            raise StandinError(f'{public_key} is not a public key: name the .pub file')
        private = public_key.with_suffix('')
        key = private if public_key.suffix == '.pub' and private.exists() else None
    else:
        key = folder / 'id_ed25519'
        keygen(key, f'app-deploy-standin-{name}')
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
    (etc / 'ssh/sshd_config.d/standin.conf').write_text('HostKey /etc/ssh/ssh_host_ed25519_key\n')
    # What many providers' images ship: passwords, and root with one. Provisioning must
    # turn both off (stage 06 on); the stand-ins' root has no password to try.
    (etc / 'ssh/sshd_config.d/50-cloud-init.conf').write_text(
        'PasswordAuthentication yes\nPermitRootLogin yes\n'
    )


def boot(host):
    """Start systemd-nspawn for ``host``; restart it while the container reboots.

    In a session of its own, so that Ctrl-C in the terminal reaches us, not it: we
    halt it with SIGTERM (a clean poweroff). Its console goes to console.log.
    """
    command = [
        *('systemd-nspawn', '--boot', f'--directory={host.folder / "rootfs"}'),
        *(f'--machine={host.name}', f'--network-namespace-path=/run/netns/{host.netns}'),
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


def let_reach(client, server, port):
    """Let the stand-in ``client`` open connections to ``port`` of ``server`` (both
    Hosts of this process), as a server reaches another over a private network."""
    pid = os.getpid()
    allow(
        (names(pid, client.name)['table'], client.address),
        (names(pid, server.name)['table'], server.address),
        port,
    )


# The ports the monitoring server scrapes on the others (Part 10): node_exporter,
# postgres_exporter, the app's metrics; and the sites' HTTPS, which it probes.
EXPORTERS = (9100, 9187, 9180)


def reaches(names):
    """Who may reach whom among the series' servers ``names``: (client, server, port).
    The others reach the backup server's ssh (Part 9); the monitoring server reaches
    each server's node_exporter, and the sites' other exporters and HTTPS (Part 10)."""
    others = [name for name in names if name not in ('backup', 'monitor')]
    paths = [(name, 'backup', 22) for name in others if 'backup' in names]
    if 'monitor' in names:
        paths += [('monitor', 'backup', 9100)] if 'backup' in names else []
        paths += [('monitor', name, port) for name in others for port in (*EXPORTERS, 443)]
    return paths


@contextlib.contextmanager
def cut_off(client, server):
    """For the block, drop all that ``client`` sends ``server``: a network that fails
    between them, both still running. In an nft table of its own, deleted after (or,
    for a killed run, by the next one's sweep)."""
    table = names(os.getpid(), f'{server.name}cut')['table']
    sh('nft', '-f', '-', input=(
        f'table ip {table} {{\n chain forward {{\n'
        f'  type filter hook forward priority filter - 1;\n'
        f'  ip saddr {client.address} ip daddr {server.address} drop\n }}\n}}\n'
    ))  # fmt: skip
    try:
        yield
    finally:
        delete_table(table)


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
    raise StandinError(
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
            stop_pid(int(pidfile.read_text()), str(made['folder']), signal.SIGTERM)
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
        except (OSError, StandinError) as error:
            print(f'standin {name}: could not remove its {what}: {error}', file=sys.stderr)


def stop_shared_ssh(folder):
    """Stop the ssh connections that Host.ssh left open to the server, by their PIDs."""
    for control in folder.glob('ssh-*'):
        ask = ['ssh', '-o', f'ControlPath={control}', '-O']
        check = subprocess.run([*ask, 'check', 'server'], capture_output=True, text=True)
        found = re.search(r'\(pid=(\d+)\)', check.stderr)
        if found:
            subprocess.run([*ask, 'exit', 'server'], capture_output=True, timeout=10)
            stop_pid(int(found[1]), str(control), signal.SIGTERM)


def halt(host, timeout):
    """Power the server off (nspawn turns SIGTERM into a clean halt); kill it after ``timeout``."""
    started = time.monotonic()
    with host.lock:
        host.stopping.set()
    host.process.terminate()
    try:
        host.process.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f'standin {host.name}: no halt in {timeout} s, killing it', file=sys.stderr)
        host.process.kill()
        host.process.wait()
    host.timings['halt'] = time.monotonic() - started


def power_cut(host):
    """Stop ``host`` at once, as a power cut: every process in it killed, none told,
    nothing written to disk after. teardown() then removes what is left."""
    kill_all(host.netns)
    with host.lock:
        host.stopping.set()
    host.process.wait(30)


def kill_all(netns):
    """Kill what still runs in the namespace: it is all this server's (a container left
    running by an nspawn killed outright)."""
    for pid in netns_pids(netns):
        with contextlib.suppress(ProcessLookupError):  # ended since it was listed
            os.kill(int(pid), signal.SIGKILL)


def delete_folder(folder):
    if folder.exists():
        shutil.rmtree(folder)


def sweep_stale():
    """Remove what the servers of killed runs left: by the names, for a PID that is gone."""
    found = set()
    for line in sh('ip', 'netns', 'list').splitlines():
        if match := NETNS.fullmatch(line.split()[0] if line.split() else ''):
            found.add((int(match[1]), match[2]))
    for line in sh('nft', 'list', 'tables').splitlines():
        if match := re.fullmatch(r'table ip app_deploy_standin_(\d+)_([a-z][a-z0-9]*)', line):
            found.add((int(match[1]), match[2]))
    for path in Path(tempfile.gettempdir()).glob('app-deploy-standin-*'):
        if match := re.fullmatch(r'app-deploy-standin-(\d+)-([a-z][a-z0-9]*)', path.name):
            found.add((int(match[1]), match[2]))
    for pid, name in sorted(found):
        if not alive(pid):
            print(
                f'Removing the stand-in server {name} a killed run ({pid}) left', file=sys.stderr
            )
            teardown(pid, name)
