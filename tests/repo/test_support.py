"""support.toml: the platform pieces the stages run on, each with its end of support.

Lint fails 90 days before an end (tools/support.py); these tests check that it would,
and that the stages use the versions the file names, so that it cannot drift from them.
"""

import datetime
import re

import pytest

from tests.helpers.workflows import load
from tools import outdated, support
from tools.stages import ROOT, STAGES
from tools.standin import image

pytestmark = pytest.mark.stages('repo')

PIECES = support.pieces()
SERVER_STAGES = [
    STAGES[number] for number in ('06', '07', '08', '09', '10')
]  # build.py, provision.py
WORKFLOW_STAGES = [STAGES[number] for number in ('07', '08', '09', '10')]


def version(name):
    return PIECES[name]['version']


def test_every_piece_says_what_it_is_its_end_its_source_and_what_comes_next():
    for name, piece in PIECES.items():
        assert set(piece) == {'uses', 'version', 'ends', 'source', 'next'}, name
        assert isinstance(piece['ends'], datetime.date), name
        assert piece['source'].startswith('https://'), name


def test_lint_fails_from_90_days_before_an_end_saying_what_to_move_to():
    postgresql = {'postgresql': PIECES['postgresql']}
    ends = postgresql['postgresql']['ends']
    assert support.ending(postgresql, ends - datetime.timedelta(days=91)) == []
    (line,) = support.ending(postgresql, ends - datetime.timedelta(days=89))
    assert line.startswith('postgresql: PostgreSQL 17')
    assert f'ends on {ends} (89 days' in line
    assert line.endswith(f'Move to {postgresql["postgresql"]["next"]}.')
    last = max(piece['ends'] for piece in PIECES.values())
    assert len(support.ending(PIECES, last + datetime.timedelta(days=1))) == len(PIECES)


def test_the_servers_and_the_stand_ins_run_the_named_debian_and_python():
    assert image.SUITE == version('debian')
    for stage in SERVER_STAGES:
        build = (stage / 'deploy' / 'build.py').read_text()
        assert f"'--python-version', default='{version('python-server')}'" in build, stage
        first_line = (stage / 'deploy' / 'nginx.conf').read_text().splitlines()[0]
        assert f'nginx {version("nginx")}' in first_line, stage


def test_ci_deploy_and_the_image_use_the_named_versions():
    for stage in WORKFLOW_STAGES:
        ci = load(stage / '.github' / 'workflows' / 'ci.yml')
        test = ci['jobs']['test']
        assert test['services']['postgres']['image'] == f'postgres:{version("postgresql")}'
        pythons = test['strategy']['matrix']['python-version']
        assert pythons[0] == version('python-oldest') and version('python-server') in pythons
        deploy = (stage / '.github' / 'workflows' / 'deploy.yml').read_text()
        assert set(re.findall(r"python-version: '([\d.]+)'", deploy)) == {version('python-server')}
        for path in (stage / '.github' / 'workflows').glob('*.yml'):
            labels = {job['runs-on'] for job in load(path)['jobs'].values()}
            assert labels == {version('runner')}, path
    dockerfile = (STAGES['08'] / 'Dockerfile').read_text()
    assert f'ARG BASE_IMAGE=docker.io/library/python:{version("image-base")}\n' in dockerfile
    assert version('image-base').startswith(f'{version("python-server")}.')
    assert version('image-base').endswith(f'-{version("debian")}')
    compose = (STAGES['08'] / 'compose.yaml').read_text()
    assert re.search(rf'image: docker\.io/library/postgres:{version("postgresql")}\.\d+-', compose)
    standin_postgres = (ROOT / 'tools' / 'standin-postgres' / 'Dockerfile').read_text()
    assert f'postgresql-{version("postgresql")} ' in standin_postgres


def test_the_readmes_promise_the_oldest_python():
    for stage in STAGES.values():
        if stage.name >= '02':
            text = (stage / 'README.md').read_text()
            assert f'Python {version("python-oldest")} or newer' in text, stage


def test_a_pin_is_behind_only_when_a_newer_release_fits():
    pinned = outdated.pins('# a comment\nFlask==3.1.3\nruff==0.17.5  # lint\nMako==1.4.3\n')
    assert pinned == {'flask': '3.1.3', 'ruff': '0.17.5', 'mako': '1.4.3'}
    resolved = {'flask': '3.1.3', 'ruff': '0.17.10', 'mako': '1.3.0'}  # mako: an older fits
    assert outdated.behind(pinned, resolved) == [('ruff', '0.17.5', '0.17.10')]
