"""The docs' pages, in the order of mkdocs.yml's nav, and the hook that builds them."""

import sys

import yaml

from tools.stages import ROOT

sys.path.insert(0, str(ROOT / 'tools'))  # the hook imports its neighbours as mkdocs runs it
import docs_hooks  # noqa: E402, F401

DOCS = ROOT / 'docs'
CONFIG = yaml.safe_load((ROOT / 'mkdocs.yml').read_text())
NAV = [next(iter(item.values())) for item in CONFIG['nav']]  # file names, in reading order
TITLES = [next(iter(item)) for item in CONFIG['nav']]


def pages():
    return [DOCS / name for name in NAV]


def page_url(site_url, name):
    """The address of the nav's page ``name`` (``part-1-server.md``) in the built site."""
    return f'{site_url}/' if name == 'index.md' else f'{site_url}/{name.removesuffix(".md")}/'
