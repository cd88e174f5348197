"""What this machine needs to run stand-in servers, and the error that says what is missing."""

import functools
import os
import shutil
import sys

from tools import processes

NEEDS = {
    'debootstrap': 'debootstrap',
    'systemd-nspawn': 'systemd-container',
    'nft': 'nftables',
    'zstd': 'zstd',
    'ip': 'iproute2',
    'ssh': 'openssh-client',
    'ssh-keygen': 'openssh-client',
}


class StandinError(Exception):
    """A stand-in server cannot be made here; the message says why, in one line."""


def check_machine():
    """Raise StandinError unless this machine can run stand-in servers."""
    if sys.platform != 'linux' or os.geteuid() != 0:
        raise StandinError(
            'stand-in servers need root on Linux (systemd-nspawn, network namespaces)'
        )
    missing = sorted({package for tool, package in NEEDS.items() if not shutil.which(tool)})
    if missing:
        raise StandinError(f'stand-in servers need: apt-get install {" ".join(missing)}')


# Commands whose failure says which command, as a StandinError.
sh = functools.partial(processes.sh, error=StandinError)
