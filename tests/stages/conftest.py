"""Fixtures of the stages that deploy: the stand-in servers (stages 06 and 07)."""

import pytest

from tests.helpers.deploy import Project, booted, keep_provisioned, provisioned_images
from tools.standin import provisioned


@pytest.fixture(scope='module')
def servers(tmp_path_factory):
    """The two stand-in servers, fresh, booted with one ssh key made for the run."""
    with booted(tmp_path_factory.mktemp('keys')) as hosts:
        yield hosts


@pytest.fixture(scope='module')
def provisioned_servers(stage_dir, stage_bin, tmp_path_factory):
    """The two stand-in servers provisioned by the stage's deploy/provision.py: from the
    images an earlier run kept (tools/standin/provisioned.py), else provisioned now and
    kept. For tests of what comes after provisioning; stage 06 tests provisioning."""
    images = provisioned_images(stage_dir)
    cached = all(provisioned.fresh(image) for image in images.values())
    with booted(tmp_path_factory.mktemp('keys'), images if cached else None) as hosts:
        if not cached:
            folder = tmp_path_factory.mktemp('provisioning') / 'app'
            Project(stage_dir, folder, stage_bin, hosts).pyinfra('provision.py')
            keep_provisioned(hosts, images)
        yield hosts
