"""A reader's project deployed to the stand-in servers with pyinfra (stages 06 on)."""

import concurrent.futures
import contextlib
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from pathlib import Path

import urllib3

from tests.helpers.machine import skip_without
from tests.helpers.reader import PooledSite
from tools import standin
from tools.standin import provisioned

DOMAINS = {'staging': 'staging.app-deploy.test', 'production': 'www.app-deploy.test'}


# The README's commands, in deploy/ (the tests add --key, and -y: do not ask).
KEYSCAN = 'ssh-keyscan -t ed25519 "$STAGING_HOST" "$PRODUCTION_HOST" > known_hosts'


FINGERPRINTS = 'ssh-keygen -lf known_hosts'


PIN = 'git add known_hosts && git commit -m "Pin the servers\' host keys"'


CLIENTS = 20


# What a failed command's report adds from each server: its failed units, and the end of
# its journal (the output of a unit's short-lived process, such as nft's error, may not
# be filed under the unit), less sshd's lines.
FAILED_UNITS = (
    "systemctl list-units --state=failed --no-legend --plain | cut -d' ' -f1"
    ' | xargs -r systemctl status --no-pager --lines=0;'
    " journalctl -b -o short-precise --no-pager | grep -v ' sshd\\[' | tail -n 40"
)


class Project:
    """A reader's project: a git copy of the stage, deployed with its deploy/ commands."""

    def __init__(self, stage_dir, folder, bin_dir, servers, keyscan=KEYSCAN):
        self.folder, self.servers, self.outputs, self.keyscan = folder, servers, [], keyscan
        shutil.copytree(stage_dir, folder, ignore=shutil.ignore_patterns('__pycache__', '.venv'))
        self.key = next(iter(servers.values())).key
        self.env = {**os.environ, 'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}'}
        for env, host in servers.items():
            self.point(env, host)
        for role in ('AUTHOR', 'COMMITTER'):
            self.env.update(
                {f'GIT_{role}_NAME': 'Reader', f'GIT_{role}_EMAIL': 'reader@example.com'}
            )
        self.git('init', '--quiet')
        self.commit('The stage, as the reader has it')
        self.pin_keys()

    def point(self, env, host):
        """Name ``host`` as the server of ``env`` (ENV_HOST, and its site's domain)."""
        self.servers[env] = host
        self.env[f'{env.upper()}_HOST'] = host.address
        if env in DOMAINS:
            self.env[f'{env.upper()}_DOMAIN'] = DOMAINS[env]

    def pin_keys(self):
        """The README's steps that pin the servers' keys: fetch them, compare their
        fingerprints with those the servers have (here, those they were made with),
        commit them."""
        self.run('bash', '-c', self.keyscan)
        fingerprints = self.run(*FINGERPRINTS.split()).stdout.split()
        for host in self.servers.values():
            pinned = subprocess.run(
                ['ssh-keygen', '-lf', host.known_hosts], capture_output=True, text=True
            )
            assert pinned.stdout.split()[1] in fingerprints
        self.run('bash', '-c', PIN)

    def ssh_as_reader(self):
        """Make `ssh` in the project's commands log in as the reader's does: with the
        run's key, checking the host keys in deploy/known_hosts (ssh reads no config
        from $HOME, so a wrapper first on PATH gives it one)."""
        tools = self.folder.parent / 'reader-bin'
        tools.mkdir(exist_ok=True)
        config = tools / 'ssh_config'
        config.write_text(
            f'IdentityFile {self.key}\nIdentitiesOnly yes\nBatchMode yes\n'
            f'UserKnownHostsFile {self.folder}/deploy/known_hosts\nStrictHostKeyChecking yes\n'
        )
        wrapper = tools / 'ssh'
        wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {config} "$@"\n')
        wrapper.chmod(0o755)
        self.env['PATH'] = f'{tools}{os.pathsep}{self.env["PATH"]}'

    def git(self, *args):
        subprocess.run(
            ['git', *args], cwd=self.folder, env=self.env, check=True, capture_output=True
        )

    def commit(self, message, files=None):
        for path, text in (files or {}).items():
            (self.folder / path).write_text(text)
        self.git('add', '--all')
        self.git('commit', '--quiet', '--allow-empty', '-m', message)

    def build(self, message=None, files=None):
        """Commit ``files`` ({path: text}), build a release of it, return its name."""
        if message:
            self.commit(message, files)
        result = self.run('python3', 'build.py')
        return result.stdout.strip().splitlines()[-1]

    def run(self, *command, check=True, timeout=300, env=None):
        result = subprocess.run(
            command,
            cwd=self.folder / 'deploy',
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # pyinfra's progress, with the results
            text=True,
            timeout=timeout,
        )
        self.outputs.append(result.stdout)
        if check and result.returncode:
            report = f'{shlex.join(command)} failed:\n{result.stdout}{self.failed_units()}'
            raise AssertionError(report)
        return result

    def failed_units(self):
        """The servers' failed units, with their journals: what a failed command's report
        lacks, and what is gone once the servers are removed."""
        report = ''
        for env, host in self.servers.items():
            try:
                status = host.ssh(FAILED_UNITS, check=False, timeout=30)
                report += f'\n--- failed units on {env} ---\n{status.stdout}{status.stderr}'
            except subprocess.TimeoutExpired:
                report += f'\n--- failed units on {env}: no answer in 30 s ---'
        return report

    @staticmethod
    def pyinfra_command(deploy, env, key=''):
        """``pyinfra inventory.py DEPLOY [--limit ENV]`` as the README has it, with the
        run's key and -y (do not ask first)."""
        limit = ['--limit', env] if env else []
        return ['pyinfra', 'inventory.py', deploy, *limit, '--key', str(key), '-y']

    def pyinfra(self, deploy, env=None, *args, check=True, **kwargs):
        """Run ``pyinfra inventory.py DEPLOY`` for ``env`` (both when None)."""
        command = self.pyinfra_command(deploy, env, self.key)
        return self.run(*command, *args, check=check, **kwargs)

    def popen_pyinfra(self, deploy, env, *args):
        return subprocess.Popen(
            [*self.pyinfra_command(deploy, env, self.key), *args],
            cwd=self.folder / 'deploy',
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


def run_readme(project, command, check=True):
    """Run one of the README's commands in deploy/: pyinfra's with the run's key and -y
    (do not ask), ssh's with that key and the pinned host keys (Project.ssh_as_reader)."""
    if command.startswith('pyinfra '):
        return project.run(*shlex.split(command), '--key', str(project.key), '-y', check=check)
    return project.run('bash', '-c', command, check=check)


def certificate(host, folder):
    """The self-signed certificate provisioning made on ``host``, in a file in ``folder``."""
    path = folder / host.name
    path.write_text(ssh(host, 'cat /etc/app-deploy/tls/fullchain.pem') + '\n')
    return path


def ssh(host, command, **kwargs):
    return host.ssh(command, **kwargs).stdout.strip()


def current(host, env):
    """The release that ``current`` points to on ``host``."""
    return Path(ssh(host, f'readlink /srv/app-deploy/{env}/current')).name


def site(host, env, certificate):
    """The site of one environment over HTTPS, its certificate checked."""
    domain = DOMAINS[env]
    pool = urllib3.HTTPSConnectionPool(
        host.address,
        443,
        maxsize=CLIENTS,
        ca_certs=str(certificate),
        server_hostname=domain,
        assert_hostname=domain,
        timeout=urllib3.Timeout(connect=5, read=40),
        retries=False,
    )
    return PooledSite(pool, domain)


@contextlib.contextmanager
def load_on(site, clients=CLIENTS, seconds=300):
    """``clients`` threads sending GET / to ``site`` for the block (at most ``seconds``),
    from a second before it to a second after; yields their (status, seconds) list."""
    answers, stop = [], threading.Event()

    def client():
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                status = site.get('/').status
            except urllib3.exceptions.HTTPError as error:
                status = repr(error)
            answers.append((status, time.monotonic() - started))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        yield answers
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join()


@contextlib.contextmanager
def disk_full(server, folder):
    """``folder`` on ``server`` moved onto a small disk of its own (a tmpfs) and the disk
    filled; room made again on leaving. The folder stays on that disk."""
    ssh(
        server,
        f'mkdir /mnt/small && mount -t tmpfs -o size=512m small /mnt/small'
        f' && cp -a {folder} /mnt/small/folder && mount --bind /mnt/small/folder {folder}'
        ' && { dd if=/dev/zero of=/mnt/small/filler bs=1M status=none || true; }',
    )
    try:
        assert ssh(server, 'df --output=avail /mnt/small').split()[-1] == '0'
        yield
    finally:
        ssh(server, 'rm /mnt/small/filler')


def sudo_allows(host):
    """What ``sudo -l`` lets ``host``'s user run: [(as whom, the command), ...]."""
    allowed = host.ssh('sudo -n -l').stdout
    return re.findall(r'^\s+\((.*?)\) (.*)$', allowed, re.MULTILINE)


def new_key(path):
    """A new ed25519 key pair without a passphrase at ``path``; its public line."""
    subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', path], check=True)
    return Path(f'{path}.pub').read_text().strip()


def authorize(host, public):
    """Let the key ``public`` log in as deploy on ``host`` (its authorized_keys)."""
    ssh(host, f"echo '{public}' >> /home/deploy/.ssh/authorized_keys")


def unauthorize(host, public):
    """Take the key ``public`` out of deploy's authorized_keys on ``host``."""
    keys = '/home/deploy/.ssh/authorized_keys'
    ssh(
        host,
        f"grep -vxF '{public}' {keys} > /tmp/keys || true; cat /tmp/keys > {keys}; rm /tmp/keys",
    )


def wait_for_the_lock(host, deploy, env='staging', seconds=180):
    """Wait until the deploy ``deploy`` (a Popen) holds ``env``'s lock on ``host``; fail
    at once if it ends first, and with the servers' ssh drop count if time runs out
    (on a loaded machine the upload before it can take a while)."""
    lock = f'/run/lock/app-deploy-{env}.lock'
    deadline = time.monotonic() + seconds
    while ssh(host, f'flock --nonblock {lock} true && echo free || true') == 'free':
        if deploy.poll() is not None:
            output = deploy.communicate()[0]
            raise AssertionError(f'the deploy ended before it took the lock:\n{output[-4000:]}')
        assert time.monotonic() < deadline, ssh(host, 'nft list ruleset | grep counter')
        time.sleep(0.2)


class Standins:
    """Stand-in servers that let in one key made for the run; any of them can be lost
    (halted and removed) and booted anew."""

    def __init__(self, keys):
        skip_without(standin.check_machine, standin.StandinError)
        new_key(keys / 'id_ed25519')
        self.public_key = keys / 'id_ed25519.pub'
        self.hosts, self.stacks = {}, {}

    def boot(self, name, tarball=None):
        stack = contextlib.ExitStack()
        host = stack.enter_context(standin.running(name, self.public_key, tarball))
        self.hosts[name], self.stacks[name] = host, stack
        print(name, ', '.join(f'{step}: {took:.1f} s' for step, took in host.timings.items()))
        return host

    def lose(self, name, power_cut=False):
        """Halt the server ``name`` (or cut its power: nothing it holds is written out)
        and remove all it was: a server lost."""
        if power_cut:
            standin.power_cut(self.hosts[name])
        self.stacks.pop(name).close()
        del self.hosts[name]

    def close(self):
        for name in reversed(list(self.stacks)):
            self.lose(name)


@contextlib.contextmanager
def booted(keys, tarballs=None, names=tuple(DOMAINS)):
    """The stand-in servers ``names``, from ``tarballs`` ({name: image}) or a fresh Debian."""
    standins = Standins(keys)
    try:
        for name in names:
            standins.boot(name, (tarballs or {}).get(name))
        yield standins.hosts
    finally:
        standins.close()


def provisioned_images(stage_dir):
    """{env: the image of its server provisioned by the stage's deploy/}."""
    return {env: provisioned.image_for(env, stage_dir / 'deploy') for env in DOMAINS}


def keep_provisioned(hosts, images):
    """Keep each server, just provisioned, as its image (both at once); say how long."""
    with concurrent.futures.ThreadPoolExecutor() as pool:
        keeping = {
            env: pool.submit(provisioned.keep, host, images[env]) for env, host in hosts.items()
        }
    print(
        'kept as images:',
        ', '.join(f'{env} {kept.result():.1f} s' for env, kept in keeping.items()),
    )
