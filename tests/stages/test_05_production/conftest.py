"""Fixtures of stage 05's tests."""

import pytest

from tools import loopback


@pytest.fixture
def site(production_env, database):
    """The stage served as in production: gunicorn behind nginx, on loopback."""
    with loopback.serve(production_env.dir, production_env.bin, database) as site:
        yield site
