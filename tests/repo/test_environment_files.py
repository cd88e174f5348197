"""The conda environment files say what the requirements files pin."""

import re
from pathlib import Path

import pytest
import yaml

from tools.bootstrap import script_dependencies
from tools.stages import ROOT, STAGES


def pins(path):
    """The ``name==version`` lines of a requirements file, by lower-case name; a
    ``-r other.txt`` line brings in that file's."""
    path = Path(path)
    found = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith('-r '):
            found.update(pins(path.parent / line[3:].strip()))
        elif line and not line.startswith('#'):
            found[line.split('==')[0].lower()] = line
    return found


def stage_pins(stage_dir):
    """What a stage's environment.yml must pin: its development requirements where it
    has them (stage 05 on: the server's plus pytest), else its requirements.txt."""
    dev = stage_dir / 'requirements-dev.txt'
    return pins(dev if dev.exists() else stage_dir / 'requirements.txt')


def conda_pins(path, name):
    """The pip pins of an environment file, by lower-case name; check its ``name``."""
    environment = yaml.safe_load(Path(path).read_text())
    assert environment['name'] == name  # one name per file, so each can be created
    assert 'prefix' not in environment
    (pip,) = [item for item in environment['dependencies'] if isinstance(item, dict)]
    for spec in environment['dependencies']:
        if isinstance(spec, str):
            assert spec.count('=') <= 1, f'{spec}: a build string ties it to one platform'
    return {spec.split('==')[0].lower(): spec for spec in pip['pip']}


def tooling_pins():
    """What the noxfile itself installs: its script dependencies, the tools its sessions
    install (ruff, the workflow checkers) and the docs' requirements."""
    noxfile = (ROOT / 'noxfile.py').read_text()
    dependencies = script_dependencies(ROOT / 'noxfile.py')
    tools = {spec.split('==')[0].lower(): spec for spec in dependencies}
    # What its sessions install by name: ruff, the workflow checkers.
    tools.update(
        {pin.split('==')[0].lower(): pin for pin in re.findall(r"'([\w.-]+==[\d.]+)'", noxfile)}
    )
    tools.update(pins(ROOT / 'docs' / 'requirements.txt'))
    return tools


@pytest.mark.stages(*STAGES)
def test_stage_environment_matches_requirements(stage_dir):
    assert conda_pins(stage_dir / 'environment.yml', f'app-deploy-{stage_dir.name}') == (
        stage_pins(stage_dir)
    )


@pytest.mark.stages('repo')
def test_root_environment_covers_every_stage_and_the_tooling():
    wanted = tooling_pins()
    for stage_dir in STAGES.values():
        for name, pin in stage_pins(stage_dir).items():
            assert wanted.setdefault(name, pin) == pin, f'stages disagree on {name}'
    assert conda_pins(ROOT / 'environment.yml', 'app-deploy') == wanted
