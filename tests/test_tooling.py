"""The commands the docs give outside the stage READMEs: nox sessions and an SSH key."""

import os
import pty
import shlex
import signal
import subprocess
import sys

import pytest
import requests

from tests.reader import free_port
from tools.stagediff import stage_diff
from tools.stages import ROOT, STAGES

pytestmark = pytest.mark.stages('repo')


def command(line):
    """``line`` as the docs give it, run with this Python for ``python3``."""
    args = shlex.split(line)
    return [sys.executable, *args[1:]] if args[0] == 'python3' else args


def test_diff_session_prints_the_diff_between_two_stages():
    result = subprocess.run(
        command('python3 noxfile.py -s diff -- 01 02'), cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == stage_diff(STAGES['01'], STAGES['02'])
    assert '--- 01-hello-world/app.py\n+++ /dev/null\n' in result.stdout
    assert '+++ 02-database-config/wsgi.py\n' in result.stdout


def test_serve_session_runs_the_app_until_ctrl_c(database):
    port = free_port()
    env = {**os.environ, 'DEV_DATABASE_URL': database, 'FLASK_RUN_PORT': str(port)}
    server = subprocess.Popen(
        command('python3 noxfile.py -s serve -- 03'),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        page = None
        for _ in range(600):
            try:
                page = requests.get(f'http://127.0.0.1:{port}/', timeout=1)
                break
            except requests.ConnectionError:
                if server.poll() is not None:
                    break
                subprocess.run(['sleep', '0.2'])
        assert page is not None and 'Hello World!' in page.text
    finally:
        os.killpg(server.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        output = server.communicate(timeout=60)[0]
    assert f'Open http://127.0.0.1:{port}/' in output
    assert 'Created the tables: names.' in output


def test_stage_session_runs_from_the_root():
    result = subprocess.run(
        command('python3 noxfile.py -s stage03 -- -k walkthrough'),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Session stage03 was successful' in result.stderr


def answer_passphrases(line, passphrase, home):
    """Run ``line`` in bash on a terminal, typing ``passphrase`` at each prompt."""
    pid, terminal = pty.fork()
    if pid == 0:
        os.environ['HOME'] = str(home)
        os.execvp('bash', ['bash', '-c', line])
    output = b''
    while True:
        try:
            data = os.read(terminal, 1024)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        output += data
        if data.rstrip().endswith(b':') and b'passphrase' in data:
            os.write(terminal, passphrase.encode() + b'\n')
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode()


def test_ssh_key_pair_with_a_passphrase(tmp_path):
    code, output = answer_passphrases(
        'mkdir -p -m 700 ~/.ssh && ssh-keygen -t ed25519 -f ~/.ssh/app_deploy',
        'correct horse battery staple',
        tmp_path,
    )
    assert code == 0, output
    ssh = tmp_path / '.ssh'
    assert oct(ssh.stat().st_mode & 0o777) == '0o700'
    public = subprocess.run(
        ['bash', '-c', 'cat ~/.ssh/app_deploy.pub'],
        env={**os.environ, 'HOME': str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert public.startswith('ssh-ed25519 ')
    # The private key is encrypted: the passphrase opens it, nothing else does.
    derive = ['ssh-keygen', '-y', '-f', str(ssh / 'app_deploy'), '-P']
    assert subprocess.run([*derive, ''], capture_output=True).returncode != 0
    opened = subprocess.run(
        [*derive, 'correct horse battery staple'], capture_output=True, text=True
    )
    assert opened.stdout.split()[:2] == public.split()[:2]
