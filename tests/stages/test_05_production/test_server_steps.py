"""Stage 05's "Put it on a server", run as written on a stand-in Debian 13 server.

The README's commands run one by one, unchanged, on a server that boots systemd
(``tools/standin/``). What a reader brings is played by the test, and only that:
their ssh key and the server's known host key, the answers they type (a password
twice, the environment file in ``sudoedit``, "yes" to apt), and a certificate
authority. Let's Encrypt cannot reach a stand-in, so Pebble, its test CA (Debian's
package), runs on the server, certbot's ``~/.config/letsencrypt/cli.ini`` points at it
and example.com resolves to the server itself. The server reaches Debian's mirror
alone, so pip finds the stage's wheels in a folder (``/etc/pip.conf``), not on PyPI.
"""

import json
import re
import secrets
import shutil
import subprocess
import sys
import time

import pytest

from tests.helpers.machine import skip_without

pytestmark = [pytest.mark.stages('05'), pytest.mark.standin]

SECTION = '## Put it on a server'
COPY = re.compile(r'^tar -cf - .* \| ssh ')  # the one step run on the reader's machine
# Pebble's ACME API and management API, on the server's loopback; HTTP-01 checks on 80.
PEBBLE = {
    'pebble': {
        'listenAddress': '127.0.0.1:14000',
        'managementListenAddress': '127.0.0.1:15000',
        'certificate': '/root/pebble/cert.pem',
        'privateKey': '/root/pebble/key.pem',
        'httpPort': 80,
        'tlsPort': 443,
        'ocspResponderURL': '',
        'externalAccountBindingRequired': False,
    }
}
# What the reader answers certbot, and where its CA is (certbot reads this file too).
CERTBOT_INI = """\
server = https://127.0.0.1:14000/dir
no-verify-ssl = true
agree-tos = true
register-unsafely-without-email = true
"""
# The server as a provider hands it over, plus the stand-ins for the reader and the CA.
SCAFFOLD = [
    'echo \'APT::Get::Assume-Yes "true";\' > /etc/apt/apt.conf.d/90yes',
    'printf "[global]\\nno-index = true\\nfind-links = /root/wheels\\n" > /etc/pip.conf',
    'echo 127.0.0.1 example.com >> /etc/hosts',
    'DEBIAN_FRONTEND=noninteractive apt-get update -qq',
    'DEBIAN_FRONTEND=noninteractive apt-get install -qq --no-install-recommends curl pebble'
    ' >/dev/null',
    'mkdir -p /root/pebble /root/.config/letsencrypt',
    'openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2'
    ' -subj /CN=pebble -addext subjectAltName=IP:127.0.0.1'
    ' -keyout /root/pebble/key.pem -out /root/pebble/cert.pem 2>/dev/null',
    'cat > /root/pebble/config.json',
    'cat > /root/.config/letsencrypt/cli.ini',
    'systemd-run --unit=pebble -E PEBBLE_VA_NOSLEEP=1 pebble -config /root/pebble/config.json',
    'for i in $(seq 50); do curl -sfk https://127.0.0.1:15000/roots/0'
    ' > /usr/local/share/ca-certificates/pebble.crt && break; sleep 0.2; done',
    'update-ca-certificates >/dev/null',
]


def server_steps(readme):
    """The console lines of the README's section ``SECTION``, in order."""
    section = readme.split(SECTION, 1)[1].split('\n## ', 1)[0]
    blocks = re.findall(r'^```console\n(.*?)^```$', section, re.MULTILINE | re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_server_steps_are_read_from_their_section():
    readme = '## Run it\n```console\nflask run\n```\n'
    readme += f'{SECTION}\n```console\nsudo a\n\nsudo b\n```\ntext\n```console\nc\n```\n'
    readme += '## Settings\n```console\nnot this\n```\n'
    assert server_steps(readme) == ['sudo a', 'sudo b', 'c']


def wheels_for_the_server(stage_dir, folder):
    """The wheels of requirements.txt for Debian 13's Python 3.13 on x86-64."""
    subprocess.run(
        [sys.executable, '-m', 'pip', 'download', '-q', '-d', folder, '--only-binary=:all:']
        + ['--python-version', '3.13', '--implementation', 'cp', '--abi', 'cp313']
        + ['--platform', 'manylinux2014_x86_64', '--platform', 'any']
        + ['-r', stage_dir / 'requirements.txt'],
        check=True,
        capture_output=True,
        timeout=300,
    )


def readers_machine(host, home):
    """A home with the reader's key at ~/.ssh/app_deploy, and an ``ssh`` that knows the
    server's host key (as Part 1's first login left it in the reader's known_hosts)."""
    (home / '.ssh').mkdir(mode=0o700, parents=True)
    (home / '.ssh/app_deploy').write_bytes(host.key.read_bytes())
    (home / '.ssh/app_deploy').chmod(0o600)
    (home / 'bin').mkdir()
    wrapper = home / 'bin/ssh'
    wrapper.write_text(
        f'#!/bin/sh\nexec {shutil.which("ssh")} -o UserKnownHostsFile={host.known_hosts}'
        ' -o BatchMode=yes "$@"\n'
    )
    wrapper.chmod(0o755)
    return {'HOME': str(home), 'PATH': f'{home}/bin:/usr/bin:/bin'}


def test_the_readme_steps_serve_the_site_on_a_debian_server(reader, tmp_path):
    """Every console line of the README's section, as written; then the site answers
    over HTTPS with the certificate certbot got, and the unit is what Part 5 says."""
    from tools import standin

    skip_without(standin.check_machine, standin.StandinError)
    steps = server_steps((reader.dir / 'README.md').read_text())
    assert COPY.match(steps[0]), steps[0]
    password = secrets.token_hex(8)
    typed = {  # what the reader types at the steps that ask
        'sudo -u postgres createuser --pwprompt app_deploy': (f'{password}\n' * 2, ''),
        'sudoedit /etc/app-deploy/production.env': ('', 'SUDO_EDITOR=/root/fill-in '),
        'sudoedit /etc/nginx/sites-available/app-deploy': ('', 'SUDO_EDITOR=true '),
    }
    assert typed.keys() <= set(steps)
    (reader.dir / '.env').write_text('SECRET_KEY=mine\n')  # the reader's own: they stay
    (reader.dir / '.venv').mkdir(exist_ok=True)
    (reader.dir / '.venv/mine').touch()
    wheels_for_the_server(reader.dir, tmp_path / 'wheels')
    with standin.running('unit05') as host:
        ssh = checked(host)
        play_the_provider_and_the_ca(host, ssh, tmp_path / 'wheels', password)
        copy = steps[0].replace('your_server_ip', host.address)
        env = readers_machine(host, tmp_path / 'home')
        subprocess.run(copy, shell=True, cwd=reader.dir, env=env, check=True, timeout=120)
        for command in steps[1:]:
            answers, prefix = typed.get(command, (None, ''))
            ssh(prefix + command, input=answers)
        check_the_site(ssh)
        check_the_unit(ssh)


def checked(host):
    """``ssh(command, input)`` on ``host``, failing with the command's output; its stdout."""

    def ssh(command, input=None, timeout=600):
        result = host.ssh(command, check=False, timeout=timeout, input=input or '')
        assert result.returncode == 0, f'{command}\n{result.stdout}{result.stderr}'
        return result.stdout

    return ssh


def play_the_provider_and_the_ca(host, ssh, wheels, password):
    """SCAFFOLD on the server, what the reader will type into sudoedit, and the wheels."""
    files = {
        '/root/pebble/config.json': json.dumps(PEBBLE),
        '/root/.config/letsencrypt/cli.ini': CERTBOT_INI,
    }
    for command in SCAFFOLD:
        ssh(command, input=files.get(command.removeprefix('cat > ')))
    environment = (
        f'SECRET_KEY={secrets.token_hex(32)}\nTRUSTED_HOSTS=example.com\n'
        f'PRODUCTION_DATABASE_URL=postgresql://app_deploy:{password}'
        '@localhost:5432/app_deploy_production\n'
    )
    editor = f'#!/bin/sh\ncat >"$1" <<EOF\n{environment}EOF\n'
    ssh('cat > /root/fill-in; chmod 700 /root/fill-in', input=editor)
    scp = ['scp', '-q', '-r', *host.ssh_options, wheels, f'root@{host.address}:']
    subprocess.run(scp, check=True, timeout=300)


def check_the_site(ssh):
    """HTTPS with the CA's certificate; the stage's files root's, the reader's left home."""
    assert ssh('curl -s https://example.com/health') == '{"status":"ok"}\n'
    issuer = ssh('openssl x509 -noout -issuer -in /etc/letsencrypt/live/example.com/cert.pem')
    assert 'Pebble' in issuer, issuer  # the certificate certbot asked the CA for
    left = ssh('ls /srv/app-deploy/.env /srv/app-deploy/.venv/mine 2>&1 || true')
    assert left.count('No such file') == 2, left
    owners = ssh('stat -c %U:%a /srv/app-deploy/wsgi.py /etc/app-deploy/production.env')
    assert owners == 'root:644\nroot:600\n'


def check_the_unit(ssh):
    """The socket only nginx reaches, the sandbox, reloads, and a bad setting's end."""
    assert ssh('stat -c "%a:%U:%G" /run/app-deploy') == '750:app-deploy:www-data\n'
    assert ssh('runuser -u nobody -- test -x /run/app-deploy || echo refused') == 'refused\n'
    exposure = ssh('systemd-analyze security app-deploy | tail -1')
    assert float(re.search(r'app-deploy\.service: ([\d.]+)', exposure)[1]) <= 2.0, exposure

    def workers(done):
        """Poll the master's workers until ``done(pids)``; return them."""
        for _ in range(120):
            pids = ssh(f'pgrep -P {master} || true').split()
            if done(pids):
                break
            time.sleep(0.5)
        return pids

    master = ssh('systemctl show -p MainPID --value app-deploy').strip()
    count = 2 * int(ssh('nproc')) + 1  # gunicorn.conf.py's default
    before = workers(lambda pids: len(pids) == count)
    ssh('systemctl reload app-deploy')  # HUP
    after = workers(lambda pids: len(pids) == count and not set(pids) & set(before))
    assert len(after) == count and not set(after) & set(before), (before, after)
    assert ssh('systemctl show -p MainPID --value app-deploy').strip() == master
    assert ssh('curl -s https://example.com/health') == '{"status":"ok"}\n'

    # A configuration error: five starts, one line each, then systemd gives up.
    ssh('sed -i /^SECRET_KEY=/d /etc/app-deploy/production.env')
    # Stopped, and its count of starts in the last minute set to zero (systemd 257 keeps
    # the unit loaded, with the count, after a stop): five are allowed from here.
    ssh('systemctl stop app-deploy && systemctl reset-failed app-deploy')
    ssh('systemctl start app-deploy || true')
    state = ssh(
        'for i in $(seq 120); do systemctl is-failed -q app-deploy && break; sleep 0.5; done;'
        ' systemctl is-active app-deploy || true'
    )
    assert state == 'failed\n'
    lines = ssh('journalctl -u app-deploy -o cat --no-pager -q --since -90s')
    errors = [line for line in lines.splitlines() if 'SECRET_KEY' in line]
    assert len(errors) == 5 and 'Start request repeated too quickly' in lines, lines
    assert 'Traceback' not in lines
