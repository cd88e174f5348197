"""Stage 10's alert rules, checked and tested by the promtool of Debian 13's Prometheus.

deploy/prometheus/alerts.yml holds the rules the monitoring server loads, and
alerts_test.yml their unit tests: series given minute by minute, and which alerts
fire when. One bare Debian 13 stand-in server (tools/standin/) installs the
`prometheus` package, as the monitoring server does, and its promtool checks the
rules and runs their tests, as the README's readers can. Then that it can fail: a
rule file with a mistake is refused, saying what is wrong, and a test that expects
the wrong alert fails.
"""

import re
import shlex

import pytest

from tests.helpers.deploy import Standins, ssh

pytestmark = [pytest.mark.stages('10'), pytest.mark.standin]

FOLDER = '/root/prometheus'  # on the server: the rules and their tests, side by side
RULES, TESTS = 'alerts.yml', 'alerts_test.yml'
UNIT = 'install-prometheus'
# In a unit of its own: a long apt run over a plain ssh command was once cut off.
INSTALL = (
    f'systemd-run --unit={UNIT} --wait --quiet -p TimeoutStartSec=600'
    " sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus'"
)


def promtool(*args):
    """The shell command that runs ``promtool ARGS`` in FOLDER."""
    return f'cd {FOLDER} && {shlex.join(["promtool", *args])}'


def rule_count(text):
    """The number of rules, alerting and recording, in a rule file's text."""
    return len(re.findall(r'^\s*- (?:alert|record): ', text, re.MULTILINE))


def changed(text, old, new):
    """``text`` with its one ``old`` made ``new``."""
    assert text.count(old) == 1, f'{old!r} is not in the file exactly once'
    return text.replace(old, new)


def put(host, name, text):
    ssh(host, f'mkdir -p {FOLDER} && cat > {FOLDER}/{name}', input=text)


@pytest.fixture(scope='module')
def files(stage_dir):
    """{name: text} of the stage's rules and their tests."""
    folder = stage_dir / 'deploy' / 'prometheus'
    return {name: (folder / name).read_text() for name in (RULES, TESTS)}


@pytest.fixture(scope='module')
def host(tmp_path_factory, files):
    """A bare Debian 13 server with Debian's Prometheus, and the stage's two files."""
    standins = Standins(tmp_path_factory.mktemp('keys'))
    try:
        host = standins.boot('rules')
        installed = host.ssh(INSTALL, check=False, timeout=660)
        journal = f'journalctl -u {UNIT} --no-pager | tail -n 40'
        assert installed.returncode == 0, ssh(host, journal)
        print(ssh(host, 'promtool --version').splitlines()[0])
        for name, text in files.items():
            put(host, name, text)
        yield host
    finally:
        standins.close()


def test_promtool_checks_the_rules(host, files):
    checked = host.ssh(promtool('check', 'rules', RULES))
    assert f'SUCCESS: {rule_count(files[RULES])} rules found' in checked.stdout


def test_the_rules_pass_their_tests(host):
    tested = host.ssh(promtool('test', 'rules', TESTS), check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert 'SUCCESS' in tested.stdout


# Mistakes in alerts.yml: (the text, what it becomes, what promtool says).
MISTAKES = {
    'an expression cut short': (
        'expr: up == 0\n',
        'expr: up ==\n',
        '"TargetDown": could not parse expression: 1:6: parse error: unexpected end of input',
    ),
    'no expression': (
        '        expr: vector(1)\n',
        '',
        '"Watchdog": field \'expr\' must be set in rule',
    ),
    'a key misspelled': (
        '        for: 2m\n        labels:\n          severity: page\n        annotations:\n'
        '          summary: "{{ $labels.instance }}: PostgreSQL',
        '        for: 2m\n        label:\n          severity: page\n        annotations:\n'
        '          summary: "{{ $labels.instance }}: PostgreSQL',
        'field label not found in type rulefmt.RuleNode',
    ),
    'a template left open': (
        '{{ $labels.name }} has failed',
        '{{ $labels.name } has failed',
        '"SystemdUnitFailed": annotation "summary": template:',
    ),
}


@pytest.mark.parametrize('mistake', MISTAKES)
def test_a_rule_file_with_a_mistake_is_refused(host, files, mistake):
    old, new, message = MISTAKES[mistake]
    put(host, 'broken.yml', changed(files[RULES], old, new))
    checked = host.ssh(promtool('check', 'rules', 'broken.yml'), check=False)
    assert checked.returncode == 1
    assert message in checked.stderr, checked.stderr


def test_a_test_that_expects_the_wrong_alert_fails(host, files):
    """SiteDown's test, expecting a ticket where the rule pages, fails: the tests can."""
    wrong = changed(
        files[TESTS],
        '              severity: page\n              job: site\n',
        '              severity: ticket\n              job: site\n',
    )
    put(host, 'wrong_test.yml', wrong)
    tested = host.ssh(promtool('test', 'rules', 'wrong_test.yml'), check=False)
    assert tested.returncode == 1
    failed = tested.stderr.split('FAILED:')[1]
    assert 'name: SiteDown pages after 2 minutes of failed probes' in failed
    assert 'severity="ticket"' in failed and 'severity="page"' in failed
