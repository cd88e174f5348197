"""The stand-in servers of Part 6 (tools/standin/), as stage 06 and readers use them.

Two servers boot side by side, staging and production; the tests talk to them over
ssh with their pinned host keys. The last of those tests stops them and checks that
nothing of theirs is left: no process, veth, nft table, namespace or folder. Then
``python3 -m tools.standin`` stopped by Ctrl-C, SIGTERM and SIGHUP (and killed, for
the next run to sweep), the reader's own key, a boot that fails, and bad input.
They need root, systemd-nspawn and the rest (tools/standin/ says what), and
take about 80 s, plus a minute or more once to build the root filesystem.
"""

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers.machine import skip_without
from tools import noxrun, standin
from tools.processes import start_piped
from tools.stages import ROOT
from tools.standin import host as host_module
from tools.standin import image, network, provisioned
from tools.standin.machine import sh

pytestmark = pytest.mark.stages('repo')
NAMES = ('staging', 'production')
FORWARD = Path('/proc/sys/net/ipv4/ip_forward')


@pytest.fixture(scope='module', autouse=True)
def possible():
    skip_without(standin.check_machine, standin.StandinError)


def ours(pid, name=''):
    """What this machine holds of the stand-in servers of the process ``pid``.

    Found by the names tools/standin/ gives: every key is empty when none is left.
    """
    return {
        'processes': [
            path.name
            for path in Path('/proc').glob('[0-9]*')
            if f'app-deploy-standin-{pid}-{name}'.encode() in read(path / 'cmdline')
        ],
        'links': [
            link['ifname']
            for link in json.loads(sh('ip', '-json', 'link'))
            if link.get('ifalias', '').startswith(f'app-deploy-standin {pid} {name}')
        ],
        'netns': [
            line.split()[0]
            for line in sh('ip', 'netns', 'list').splitlines()
            if line.startswith(f'app-deploy-standin-{pid}-{name}')
        ],
        'tables': [
            line
            for line in sh('nft', 'list', 'tables').splitlines()
            if f'app_deploy_standin_{pid}_{name}' in line
        ],
        'folders': list(Path(tempfile.gettempdir()).glob(f'app-deploy-standin-{pid}-{name}*')),
    }


NOTHING = {'processes': [], 'links': [], 'netns': [], 'tables': [], 'folders': []}


def read(path):
    with contextlib.suppress(OSError):
        return path.read_bytes()
    return b''


def nft_tables():
    """The nft tables stand-in servers could make or leave: this run's own and
    systemd-nspawn's. Others come and go as other work runs beside these tests: other
    runs' stand-in servers, Podman's ``ip nat`` and ``ip filter`` (stage 08)."""
    return sorted(
        line
        for line in sh('nft', 'list', 'tables').splitlines()
        if f'app_deploy_standin_{os.getpid()}_' in line or 'io.systemd' in line
    )


def any_servers_left():
    """Whether any stand-in server (of any run) still has its namespace."""
    return any(network.NETNS.fullmatch(n) for n in sh('ip', 'netns', 'list').split())


class Servers:
    """This module's two servers, and what the machine looked like before them."""

    def __init__(self, stack):
        self.stack = stack
        self.forwarding = FORWARD.read_text()
        self.tables = nft_tables()
        started = time.monotonic()
        self.hosts = {name: stack.enter_context(standin.running(name)) for name in NAMES}
        self.boot_seconds = time.monotonic() - started


@pytest.fixture(scope='module')
def servers():
    with contextlib.ExitStack() as stack:  # a failed boot stops the server booted before it
        yield Servers(stack)


@pytest.fixture(params=NAMES)
def host(request, servers):
    return servers.hosts[request.param]


def test_two_servers_on_subnets_of_their_own(servers):
    staging, production = servers.hosts.values()
    print(f'both up in {servers.boot_seconds:.1f} s:', staging.timings, production.timings)
    assert staging.address.rsplit('.', 1)[0] != production.address.rsplit('.', 1)[0]
    for host in (staging, production):
        assert host.address.startswith('10.213.')
        assert host.known_hosts.read_text().startswith(f'{host.address} ssh-ed25519 ')
    # The machine's nft tables gained one per server, and nothing else (no io.systemd.nat).
    added = [f'table ip app_deploy_standin_{os.getpid()}_{name}' for name in NAMES]
    assert nft_tables() == sorted([*servers.tables, *added])


def test_systemd_runs_the_server(host):
    state = host.ssh('systemctl is-system-running --wait', check=False, timeout=60).stdout.strip()
    if state != 'running':
        print(f'{host.name} is {state}:', host.ssh('systemctl --failed', check=False).stdout)
    assert state in ('running', 'degraded')
    assert host.ssh('cat /proc/1/comm').stdout == 'systemd\n'
    assert host.ssh('hostname').stdout == f'{host.name}\n'
    assert host.ssh('systemctl is-active ssh systemd-networkd').stdout == 'active\nactive\n'
    # A unit started and stopped, as a deploy does with gunicorn.
    host.ssh('systemd-run --unit=probe sleep 300')
    assert host.ssh('systemctl is-active probe').stdout == 'active\n'
    host.ssh('systemctl stop probe')
    assert host.ssh('systemctl is-active probe', check=False).stdout != 'active\n'


def test_the_printed_ssh_line_logs_in(host):
    line = f'{host.ssh_line} id -un'
    login = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=30)
    assert login.stdout == 'root\n', login.stderr


def ssh_with(host, known_hosts):
    """ssh to ``host`` with the key it lets in, checking its host key against ``known_hosts``."""
    command = [
        *('ssh', '-o', f'UserKnownHostsFile={known_hosts}', '-o', 'StrictHostKeyChecking=yes'),
        *('-o', 'GlobalKnownHostsFile=/dev/null', '-o', 'BatchMode=yes', '-i', str(host.key)),
        *(f'root@{host.address}', 'true'),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_an_unknown_host_key_is_refused(servers, tmp_path):
    staging, production = servers.hosts.values()
    (tmp_path / 'empty').write_text('')
    refused = ssh_with(staging, tmp_path / 'empty')
    assert refused.returncode == 255
    assert 'Host key verification failed' in refused.stderr
    # Production's key written down for staging's address: a server whose key changed.
    other = production.known_hosts.read_text().replace(production.address, staging.address)
    (tmp_path / 'other').write_text(other)
    refused = ssh_with(staging, tmp_path / 'other')
    assert refused.returncode == 255
    assert 'REMOTE HOST IDENTIFICATION HAS CHANGED' in refused.stderr
    assert ssh_with(staging, staging.known_hosts).returncode == 0


def test_each_server_reaches_the_package_mirror(host):
    mirror, _ = image.mirrors()
    url = f'{mirror}/dists/{image.SUITE}/InRelease'
    fetch = f'import urllib.request; print(urllib.request.urlopen({url!r}, timeout=20).status)'
    assert host.ssh(f'python3 -c "{fetch}"').stdout == '200\n'


def test_apt_get_update_on_staging(servers):
    staging = servers.hosts['staging']
    started = time.monotonic()
    update = staging.ssh('apt-get update', check=False, timeout=300)
    print(f'apt-get update took {time.monotonic() - started:.1f} s')
    assert update.returncode == 0, update.stdout + update.stderr
    assert 'Candidate: 1.26' in staging.ssh('apt-cache policy nginx').stdout  # Debian 13's


def connecting(client, address, port):
    """What ``client`` gets, trying to open a TCP connection to ``address``:``port``:
    'connected', or the error's name ('TimeoutError': dropped on the way)."""
    probe = (
        'import socket\n'
        'try:\n'
        f'    socket.create_connection(({address!r}, {port}), timeout=3)\n'
        "    print('connected')\n"
        'except OSError as error:\n'
        '    print(type(error).__name__)\n'
    )
    return client.ssh(f'python3 -c "{probe}"').stdout.strip()


def test_the_servers_reach_nothing_else(servers):
    """Not each other (the one other address a test may send to), and no DNS."""
    staging, production = servers.hosts.values()
    assert connecting(staging, production.address, 22) == 'TimeoutError'
    assert staging.ssh('getent hosts example.org', check=False).returncode != 0


def test_a_server_let_reach_another_reaches_that_port_alone(servers):
    """let_reach(staging, production, 22): that port, that way; not another port, nor
    the other way (Part 9's backup server, reached over ssh from the others)."""
    staging, production = servers.hosts.values()
    standin.let_reach(staging, production, 22)
    assert connecting(staging, production.address, 22) == 'connected'
    assert connecting(staging, production.address, 80) == 'TimeoutError'  # dropped, not refused
    assert connecting(production, staging.address, 22) == 'TimeoutError'
    banner = staging.ssh(f'timeout 5 bash -c "head -c 8 < /dev/tcp/{production.address}/22"')
    assert banner.stdout == 'SSH-2.0-'


def test_who_reaches_whom_among_the_series_servers():
    """The database servers reach the backup server's ssh (Part 9); the monitoring
    server reaches every node_exporter, and the sites' other exporters and HTTPS."""
    assert standin.reaches(['staging', 'production']) == []
    assert standin.reaches(['backup', 'staging', 'production']) == [
        ('staging', 'backup', 22),
        ('production', 'backup', 22),
    ]
    assert standin.reaches(['staging', 'backup', 'monitor']) == [
        ('staging', 'backup', 22),
        ('monitor', 'backup', 9100),
        ('monitor', 'staging', 9100),
        ('monitor', 'staging', 9187),
        ('monitor', 'staging', 9180),
        ('monitor', 'staging', 443),
    ]


def test_a_reboot_comes_back(servers):
    staging = servers.hosts['staging']
    before = staging.process.pid
    staging.ssh('touch /run/before-reboot')  # /run is a new tmpfs at each boot
    started = time.monotonic()
    staging.ssh('systemctl reboot', check=False)
    while staging.process.pid == before and time.monotonic() - started < 30:
        time.sleep(0.1)
    host_module.wait_for_ssh(staging)
    print(f'rebooted to ssh in {time.monotonic() - started:.1f} s')
    state = staging.ssh('systemctl is-system-running --wait', check=False).stdout.strip()
    assert state in ('running', 'degraded')
    assert staging.ssh('test -e /run/before-reboot', check=False).returncode == 1


def test_nothing_is_left_after_the_servers_stop(servers):
    hosts = list(servers.hosts.values())
    assert ours(os.getpid())['processes']
    started = time.monotonic()
    servers.stack.close()
    halts = ', '.join(f'{host.timings["halt"]:.1f} s' for host in hosts)
    print(f'halted and removed both in {time.monotonic() - started:.1f} s (halts: {halts})')
    assert [host.process.poll() for host in hosts] == [0, 0]  # a clean poweroff
    assert ours(os.getpid()) == NOTHING
    assert nft_tables() == servers.tables
    if not any_servers_left():
        assert FORWARD.read_text() == servers.forwarding


# --- python3 -m tools.standin, stopped every way -------------------------------------


class Command:
    """``python3 -m tools.standin ARGS``, in a session of its own, as in a terminal."""

    def __init__(self, *args, command=(sys.executable, '-m', 'tools.standin'), env=None):
        self.process = start_piped([*command, *args], env=env, cwd=ROOT)
        self.lines = queue.Queue()
        self.output = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text, timeout=120):
        """The first line of output after the one that holds ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                line = self.lines.get(timeout=1)
                assert line is not None, f'ended before {text!r}:\n{"".join(self.output)}'
                self.output.append(line)
                if text in line:
                    return self.lines.get(timeout=10)
        raise AssertionError(f'no {text!r} in {timeout} s:\n{"".join(self.output)}')

    def stop(self, signum, group=False):
        (os.killpg if group else os.kill)(self.process.pid, signum)
        return self.process.wait(60)


@pytest.fixture
def command():
    made = []
    yield lambda *args: made.append(Command(*args)) or made[-1]
    for each in made:  # a test that failed midway: stop it, and sweep what it left
        if each.process.poll() is None:
            each.stop(signal.SIGTERM)
        standin.sweep_stale()


@pytest.mark.parametrize(
    ('signum', 'group'),
    [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGHUP, True)],
    ids=['Ctrl-C', 'SIGTERM', 'SIGHUP'],
)
def test_the_command_runs_until_stopped(command, signum, group):
    server = command('staging')
    ssh_line = server.wait_for('Log in with').strip()
    assert ssh_line.startswith('ssh -o UserKnownHostsFile=')
    login = subprocess.run(f'{ssh_line} hostname', shell=True, capture_output=True, text=True)
    assert login.stdout == 'staging\n', login.stderr
    started = time.monotonic()
    assert server.stop(signum, group) == 0
    print(f'stopped and removed in {time.monotonic() - started:.1f} s')
    assert ours(server.process.pid) == NOTHING


def command_line(process):
    """The process's arguments; none for one that ended meanwhile (ssh-keygen, ip...)."""
    try:
        return process.cmdline()
    except psutil.NoSuchProcess:
        return []


def test_the_nox_session_runs_until_ctrl_c(tmp_path):
    """`python3 noxfile.py -s standin -- staging`: a run of its own, in its own folder
    (the run these tests are part of holds .nox/)."""
    nox = (sys.executable, 'noxfile.py', '--envdir', str(tmp_path), '-s', 'standin', '--')
    env = {key: value for key, value in os.environ.items() if key != noxrun.RUN_VARIABLE}
    server = Command('staging', command=nox, env=env)
    try:
        assert server.wait_for('Log in with').strip().startswith('ssh ')
        (module,) = [
            child
            for child in psutil.Process(server.process.pid).children(recursive=True)
            if 'tools.standin' in command_line(child)
        ]
        assert server.stop(signal.SIGINT, group=True) == 0
        assert ours(module.pid) == NOTHING
    finally:
        if server.process.poll() is None:
            server.stop(signal.SIGTERM)
        standin.sweep_stale()


def test_what_a_killed_run_left_is_removed_by_the_next(command):
    server = command('staging')
    server.wait_for('Log in with')
    server.stop(signal.SIGKILL)
    left = ours(server.process.pid)
    assert left['processes'] and left['netns'] and left['links'] and left['tables']
    standin.sweep_stale()
    assert ours(server.process.pid) == NOTHING


def test_the_readers_key(tmp_path):
    """--key ~/.ssh/app_deploy.pub: that key logs in, and the ssh line names its private key."""
    key = tmp_path / 'app_deploy'
    sh('ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', key)
    with standin.running('readers', public_key=f'{key}.pub') as host:
        assert host.key == key
        assert f'-i {key} ' in host.ssh_line
        assert host.ssh('hostname').stdout == 'readers\n'
    assert ours(os.getpid(), 'readers') == NOTHING


def test_a_kept_image_boots_with_what_it_held_and_keys_of_its_own(tmp_path, monkeypatch):
    """A server kept as an image (tools/standin/provisioned.py) comes back as it was, less
    its host key and machine id, which each copy makes anew; the first comes back too."""
    monkeypatch.setattr(provisioned, 'CACHE', tmp_path)
    kept = tmp_path / 'provisioned-readers-test.tar.zst'
    with standin.running('readers') as host:
        host.ssh('echo provisioned > /etc/app-deploy-kept')
        before = host.ssh('cat /etc/machine-id /etc/ssh/ssh_host_ed25519_key.pub').stdout
        provisioned.keep(host, kept)
        assert host.ssh('cat /etc/app-deploy-kept').stdout == 'provisioned\n'
    with standin.running('readers', tarball=kept) as copy:
        assert copy.ssh('cat /etc/app-deploy-kept').stdout == 'provisioned\n'
        after = copy.ssh('cat /etc/machine-id /etc/ssh/ssh_host_ed25519_key.pub').stdout
        assert set(after.splitlines()).isdisjoint(before.splitlines())
    assert ours(os.getpid(), 'readers') == NOTHING


def test_an_images_key_is_what_made_it(tmp_path):
    """The same code gives the same image wherever it lies; one byte, a file's name or
    the server's name changed gives another."""
    for folder in ('a', 'b'):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / 'provision.py').write_text('apt install nginx\n')
    first = provisioned.image_for('staging', tmp_path / 'a')
    assert provisioned.image_for('staging', tmp_path / 'b') == first
    assert provisioned.image_for('production', tmp_path / 'a') != first
    (tmp_path / 'b' / 'provision.py').write_text('apt install nginx \n')
    assert provisioned.image_for('staging', tmp_path / 'b') != first
    (tmp_path / 'a' / 'provision.py').rename(tmp_path / 'a' / 'setup.py')
    assert provisioned.image_for('staging', tmp_path / 'a') != first


def test_a_server_that_does_not_boot_is_removed(monkeypatch):
    def no_ssh(host):
        raise standin.StandinError(f'{host.name} did not answer')

    monkeypatch.setattr(host_module, 'wait_for_ssh', no_ssh)
    with pytest.raises(standin.StandinError, match='broken did not answer'):
        with standin.running('broken'):
            pass
    assert ours(os.getpid(), 'broken') == NOTHING


@pytest.mark.parametrize(
    ('args', 'message'),
    [
        (['Staging'], "a server name is lower case letters and digits: not 'Staging'"),
        (['staging', 'staging'], 'this process already runs a server named staging'),
        (['staging', '--key', '{private}'], '{private} is not a public key: name the .pub file'),
    ],
    ids=['bad name', 'same name twice', 'private key'],
)
def test_bad_input_stops_with_one_line(tmp_path, args, message):
    private = tmp_path / 'app_deploy'
    sh('ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', private)
    args = [arg.format(private=private) for arg in args]
    command = [sys.executable, '-m', 'tools.standin', *args]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 1
    assert stderr.splitlines()[-1] == f'standin: {message.format(private=private)}'
    assert ours(process.pid) == NOTHING
