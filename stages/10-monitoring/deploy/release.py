"""Deploy a release to an environment: first staging, then the same one to production.

    pyinfra inventory.py release.py --limit staging
    pyinfra inventory.py release.py --limit production

Staging gets the newest release in build/ (build.py makes them), production
the one staging runs; `--data release=NAME` names another. Production only takes a
release that passed its health check on staging. On the server, app-deploy-release
installs it beside the others, migrates the database, switches to it, checks /health,
and switches back when that fails.
"""

import secrets
from pathlib import Path

from pyinfra import host, inventory
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import File, Link
from pyinfra.operations import files, server

env = host.data.env
releases = sorted(Path('build').glob('*.tar.gz'))
name = host.data.get('release')
if env == 'production':
    staging = inventory.get_group('staging', [])
    if not staging:
        raise DeployError('set STAGING_HOST: production takes what staging runs')
    staging_current = staging[0].get_fact(Link, path='/srv/app-deploy/staging/current')
    name = name or (staging_current and Path(staging_current['link_target']).name)
    passed = f'/srv/app-deploy/staging/releases/{name}/HEALTHY'
    if not name or not staging[0].get_fact(File, path=passed):
        raise DeployError(f'staging has not run {name or "a release"}; deploy it there first')
elif not name:
    if not releases:
        raise DeployError('no release in build/; make one: python3 build.py')
    name = releases[-1].name.removesuffix('.tar.gz')

archive = Path('build') / f'{name}.tar.gz'
if not archive.exists():
    raise DeployError(f'{archive} is not here; build it (python3 build.py) or name another')
# A name of its own for each upload, so that two deploys never write the same file.
upload = f'/srv/app-deploy/{env}/uploads/{name}.{secrets.token_hex(4)}.tar.gz'

files.put(name=f'Upload {name}', src=str(archive), dest=upload, mode='600')
# As root, or as deploy, whom sudo lets run app-deploy-release alone (provision.py).
server.shell(
    name=f'Install {name}, migrate, switch {env} to it, check /health',
    commands=[f'sudo -n /usr/local/sbin/app-deploy-release install {env} {Path(upload).name}'],
)
