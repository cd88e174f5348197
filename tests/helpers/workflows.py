"""GitHub Actions workflows read as data, and the two checkers that run offline."""

import shutil
import subprocess

import pytest
import yaml


def check_jsonschema(path):
    """GitHub's workflow schema, vendored in check-jsonschema (no network)."""
    command = [tool('check-jsonschema'), '--verbose', '--builtin-schema']
    command += ['vendor.github-workflows', str(path)]
    return subprocess.run(command, capture_output=True, text=True)


def zizmor(path):
    """zizmor's findings of medium severity or above; exit code 0 when there are none."""
    command = [tool('zizmor'), '--offline', '--min-severity', 'medium', '--color', 'never']
    return subprocess.run([*command, str(path)], capture_output=True, text=True)


def load(path):
    workflow = yaml.safe_load(path.read_text())
    workflow['on'] = workflow.pop(True, workflow.get('on'))  # YAML 1.1 reads `on` as true
    return workflow


def uses(action, steps):
    return [step for step in steps if step.get('uses', '').startswith(f'{action}@')]


def tool(name):
    path = shutil.which(name)
    if not path:
        pytest.skip(f'{name} is not installed: run these tests with nox -s docs')
    return path


def assert_schema_refuses(path, key):
    """check-jsonschema fails the workflow ``path`` for its unexpected ``key``."""
    result = check_jsonschema(path)
    assert result.returncode == 1, result.stdout
    assert f"Additional properties are not allowed ('{key}' was unexpected)" in result.stdout


def assert_zizmor_finds(path, finding):
    """zizmor fails the workflow ``path`` with ``finding`` (such as ``unpinned-uses``)."""
    result = zizmor(path)
    assert result.returncode != 0, result.stdout
    assert f'error[{finding}]' in result.stdout, result.stdout
