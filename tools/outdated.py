"""List the pinned packages that are older than the newest release that fits with the rest.

    python3 -m tools.outdated   (nox -s outdated)

For each requirements file of the stages and of the docs, uv resolves the same package
names again with no versions given, as new as they will go together, and each pin that
is behind that is printed: readers copy our pins, and a stale pin hands them its bugs.
It lists, it does not fail: moving a pin is a change to test, not a chore for CI.
"""

import re
import subprocess
import sys

from packaging.version import Version

from tools.stages import ROOT

PIN = re.compile(r'^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)', re.MULTILINE)


def pins(text):
    """{normalized name: version} of the ``name==version`` lines of a requirements file."""
    return {normalize(name): version for name, version in PIN.findall(text)}


def normalize(name):
    return re.sub(r'[-_.]+', '-', name).lower()


def newest(names, uv='uv', python_version='3.11'):
    """{name: version}: what uv resolves ``names`` to, unpinned, for ``python_version``."""
    result = subprocess.run(
        [uv, 'pip', 'compile', '-', '--no-header', '--no-annotate', '--quiet']
        + ['--python-version', python_version],
        input='\n'.join(sorted(names)) + '\n',
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return pins(result.stdout)


def behind(pinned, resolved):
    """(name, pinned, newest) for each pin older than what the resolution chose."""
    return [
        (name, version, resolved[name])
        for name, version in sorted(pinned.items())
        if name in resolved and Version(resolved[name]) > Version(version)
    ]


def requirement_files():
    """The stages' requirements, their deploy tools' (stage 06 on), and the docs'."""
    found = [
        *ROOT.glob('stages/*/requirements*.txt'),
        *ROOT.glob('stages/*/deploy/requirements.txt'),
    ]
    return sorted([*found, ROOT / 'docs' / 'requirements.txt'])


def main(uv='uv'):
    count = 0
    for path in requirement_files():
        pinned = pins(path.read_text())
        for name, version, latest in behind(pinned, newest(pinned, uv)):
            print(f'{path.relative_to(ROOT)}: {name}=={version}, newest {latest}')
            count += 1
    print(f'{count} pins behind the newest releases that fit together')


if __name__ == '__main__':
    main(*sys.argv[1:])
