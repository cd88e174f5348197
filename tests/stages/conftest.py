"""Fixtures of the stages that deploy: the stand-in servers (stages 06 and 07)."""

import contextlib
import subprocess

import pytest

from tests.helpers.deploy import DOMAINS
from tests.helpers.machine import skip_without
from tools import standin


@pytest.fixture(scope='module')
def servers(tmp_path_factory):
    """The two stand-in servers, booted with one ssh key made for the run."""
    skip_without(standin.check_machine, standin.StandinError)
    keys = tmp_path_factory.mktemp('keys')
    subprocess.run(
        ['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', keys / 'id_ed25519'], check=True
    )
    with contextlib.ExitStack() as stack:
        hosts = {
            env: stack.enter_context(standin.running(env, keys / 'id_ed25519.pub'))
            for env in DOMAINS
        }
        for env, host in hosts.items():
            print(env, ', '.join(f'{step}: {took:.1f} s' for step, took in host.timings.items()))
        yield hosts
