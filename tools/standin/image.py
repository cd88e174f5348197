"""The stand-in servers' root filesystem: Debian by debootstrap, built once and kept."""

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.processes import locked, start_piped
from tools.standin.machine import StandinError, sh

SUITE = 'trixie'  # Debian 13


PACKAGES = 'systemd,systemd-sysv,dbus,openssh-server,python3,python3-venv,sudo,iproute2,'
PACKAGES += 'ca-certificates'


# Owners, modes, extended attributes and ACLs exactly as they are (ids, not names).
TAR = ['tar', '--numeric-owner', '--xattrs', '--xattrs-include=*', '--acls']


# Bump when the image is prepared differently, so that a cached tarball is rebuilt.
IMAGE_VERSION = 1


# APP_DEPLOY_CACHE, when set, names another folder (tools/benchmark.py: a cold run).
CACHE = Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'app-deploy'
CACHE = Path(os.environ.get('APP_DEPLOY_CACHE') or CACHE) / 'standin'


DEFAULT_MIRROR = 'http://deb.debian.org/debian'


DEFAULT_SECURITY = 'http://deb.debian.org/debian-security'


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
    """Debian's mirror and security mirror: those of this machine's apt sources (a
    mirror serves every Debian release, so a Debian 12 machine's serves 13), else
    deb.debian.org's."""
    found = {}
    for uri, suite in apt_sources():
        release, _, kind = suite.partition('-')
        if release in DEBIAN and kind in ('', 'security'):
            found.setdefault(kind, uri.rstrip('/'))
    return found.get('', DEFAULT_MIRROR), found.get('security', DEFAULT_SECURITY)


DEBIAN = {'bookworm', 'trixie', 'forky', 'sid'}  # releases whose mirror serves ours


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
    process = start_piped(command)
    try:
        output = process.communicate()[0]
    finally:
        if process.poll() is None:  # Ctrl-C or SIGTERM: its trap unmounts what it mounted
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
    if process.returncode:
        raise StandinError(f'debootstrap failed:\n{output[-2000:]}')


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
