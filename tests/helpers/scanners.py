"""The outside tools that review the nginx site: sslyze scans a server's TLS, gixy reads
the configuration. Both are installed with the tests (noxfile.py's script block)."""

import json
import re
import subprocess
import sys


def sslyze_failures(target):
    """The checks of Mozilla's intermediate profile that sslyze finds failed at
    ``target`` (``name:port{address}`` sends ``name`` in the handshake), by name."""
    result = subprocess.run(
        [sys.executable, '-m', 'sslyze', '--mozilla_config=intermediate', target],
        capture_output=True,
        text=True,
        timeout=300,
    )
    _, found, compliance = result.stdout.partition('COMPLIANCE AGAINST')
    if not found:
        raise RuntimeError(f'sslyze could not scan {target}:\n{result.stdout}{result.stderr}')
    return dict(re.findall(r'^\s+\* (\w+): (.*)$', compliance, re.MULTILINE))


def gixy_findings(config):
    """What gixy finds in the nginx configuration ``config``, as its JSON list."""
    result = subprocess.run(
        [sys.executable, '-m', 'gixy', '--format', 'json', config],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if 'not found' in result.stderr or result.returncode not in (0, 1):
        raise RuntimeError(f'gixy could not read all of {config}:\n{result.stderr}')
    return json.loads(result.stdout)
