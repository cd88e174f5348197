"""Provisioned stand-in servers kept as images, so that a test that needs a server
provisioned unpacks one in seconds instead of running apt for a minute.

An image is a server's root filesystem packed after provisioning, without its host
keys and machine id (each copy makes its own). Its name holds a key of what made it:
the root filesystem it started from, the server's name, and every file of the
provisioning code (a stage's ``deploy/`` folder), so that changing one byte of those
makes a new image. The apt packages are the mirror's of the day it was made: an image
older than MAX_AGE is made again. The tests of provisioning still provision for real.
"""

import hashlib
import os
import time
from pathlib import Path

from tools.processes import alive
from tools.standin.host import boot, halt, stop_shared_ssh, wait_for_ssh
from tools.standin.image import CACHE, TAR, image
from tools.standin.machine import sh

MAX_AGE = 7 * 24 * 3600  # seconds: Debian's security updates come every few days
KEPT = 8  # images at most, the newest: two servers for each of four stages
# Left out: what each copy makes its own of, and apt's downloads (a third of the size).
NOT_KEPT = [
    'etc/ssh/ssh_host_*',
    'etc/machine-id',
    'var/cache/apt/archives/*.deb',
    'var/cache/apt/*.bin',
    'var/lib/apt/lists/*_*',
]


def image_for(name, code):
    """The path of the image of the server ``name`` provisioned by the folder ``code``."""
    digest = hashlib.sha256(f'{image().name} {name}'.encode())
    for path in sorted(Path(code).rglob('*')):
        if path.is_file() and '__pycache__' not in path.parts:
            digest.update(f'{path.relative_to(code)}\0'.encode() + path.read_bytes() + b'\0')
    return CACHE / f'provisioned-{name}-{digest.hexdigest()[:12]}.tar.zst'


def fresh(path):
    """Whether the image ``path`` is there and younger than MAX_AGE."""
    return path.exists() and time.time() - path.stat().st_mtime < MAX_AGE


def keep(host, path):
    """Halt ``host``, pack its root filesystem into the image ``path``, boot it again.

    Halted, so that PostgreSQL and the rest have written all they hold; the server
    comes back as after a reboot. Returns the seconds it took.
    """
    started = time.monotonic()
    stop_shared_ssh(host.folder)
    halt(host, timeout=60)
    partial = path.with_name(f'{path.name}.{os.getpid()}.{host.name}.partial')
    try:
        excluded = [f'--exclude=./{pattern}' for pattern in NOT_KEPT]
        rootfs = host.folder / 'rootfs'
        sh(*TAR, *excluded, '-I', 'zstd -T0 -3', '-C', rootfs, '-cf', partial, '.')
        partial.rename(path)
    finally:
        partial.unlink(missing_ok=True)
        host.stopping.clear()
        boot(host)
        wait_for_ssh(host)
    images = sorted(CACHE.glob('provisioned-*.tar.zst'), key=lambda p: p.stat().st_mtime)
    for old in images[:-KEPT]:
        old.unlink(missing_ok=True)
    for left in CACHE.glob('provisioned-*.partial'):  # by a run killed while packing
        if not alive(int(left.name.split('.')[-3])):
            left.unlink(missing_ok=True)
    return time.monotonic() - started
