"""Stage 10 end to end: a fourth server watches the others, and mails what is wrong.

Four Debian 13 stand-in servers boot with systemd (tools/standin/): backup, staging,
production, and monitor, which may reach the others' exporters and sites, and which
the tests give an SMTP sink in place of the reader's relay (Debian's python3-aiosmtpd).
The tests run the README's commands from a git copy of the stage, as a reader does,
then check that Prometheus scrapes every target, that the exporters are closed to
everyone but the monitoring server, and that a site taken down is mailed, and its
mending too, with the time from fault to mail printed (pytest -s).
"""

import json
import re
import shlex
import time

import jinja2
import pytest

from tests.helpers.deploy import (
    DOMAINS,
    FINGERPRINTS,
    PIN,
    Project,
    Standins,
    certificate,
    run_readme,
    site,
    ssh,
)
from tests.helpers.markdown import fenced_blocks, readme_commands
from tools import standin
from tools.stagediff import same_in
from tools.stages import STAGES

pytestmark = pytest.mark.stages('10')

# Booted in this order, halted in the other (the backup server last: Part 9).
SERVERS = ('backup', 'monitor', 'staging', 'production')
KEYSCAN = (
    'ssh-keyscan -t ed25519 "$STAGING_HOST" "$PRODUCTION_HOST" "$BACKUP_HOST" "$MONITOR_HOST"'
    ' > known_hosts'
)
PROVISION_BACKUP = 'pyinfra inventory.py backup_server.py --limit backup'
PROVISION = 'pyinfra inventory.py provision.py --limit staging --limit production'
PROVISION_MONITOR = 'pyinfra inventory.py monitor_server.py --limit monitor'
TARGETS = 'ssh root@"$MONITOR_HOST" curl -s http://127.0.0.1:9090/api/v1/targets'
RUNS = [
    'pip install -r deploy/requirements.txt',  # the nox session, from requirements-dev.txt
    'cd deploy',  # Project.run
    'export STAGING_HOST=staging.example.com',  # the stand-ins' addresses, in Project.env
    'export PRODUCTION_HOST=example.com',
    'export BACKUP_HOST=backup.example.net',
    'export MONITOR_HOST=monitor.example.net',
    'export ALERT_SMTP=smtp.example.com:587',  # the tests' sink, in Project.env
    'export ALERT_FROM=alerts@example.com',
    'export ALERT_TO=you@example.com',
    KEYSCAN,
    FINGERPRINTS,
    PIN,
    PROVISION_BACKUP,
    PROVISION,
    PROVISION_MONITOR,
    'python3 build.py',
    'pyinfra inventory.py release.py --limit staging',
    'pyinfra inventory.py release.py --limit production',
    TARGETS,
]
# Run by the stage 06 and 09 tests on the same files (the test below checks they are).
RUN_BY_STAGE_06 = ['pyinfra inventory.py rollback.py --limit production']
NOT_RUN = [  # certbot needs a domain that Let's Encrypt can reach
    'sudo apt install certbot',
    'sudo certbot certonly --webroot -w /var/www/letsencrypt -d example.com'
    ' --deploy-hook "systemctl reload nginx"',
]
# The exporters' ports (deploy/nftables.conf), and what listens on them.
EXPORTERS = {9100: 'node_exporter', 9187: 'postgres_exporter', 9180: "the app's metrics"}
SINK = '/var/mail/alerts'  # the SMTP sink's Maildir on the monitoring server
SINK_START = (
    'systemd-run --unit=smtp-sink python3 -m aiosmtpd -n -l 127.0.0.1:2525'
    f' -c aiosmtpd.handlers.Mailbox {SINK}'
)


@pytest.fixture(scope='module')
def standins(tmp_path_factory):
    """The four servers; staging and production may reach backup's ssh, and monitor
    may reach every server's exporters and each site's HTTPS."""
    servers = Standins(tmp_path_factory.mktemp('keys'))
    try:
        for name in SERVERS:
            servers.boot(name)
        for client, server, port in standin.reaches(SERVERS):
            standin.let_reach(servers.hosts[client], servers.hosts[server], port)
        yield servers
    finally:
        servers.close()


def sink_on(monitor):
    """Start an SMTP sink on the monitoring server, in place of the reader's relay: every
    mail Alertmanager sends lands in SINK, a Maildir."""
    install = (
        'apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-aiosmtpd'
    )
    ssh(monitor, f'systemd-run --wait --quiet sh -c {shlex.quote(install)}', timeout=400)
    ssh(monitor, SINK_START)


@pytest.fixture(scope='module')
def project(stage_dir, stage_bin, standins, tmp_path_factory):
    folder = tmp_path_factory.mktemp('project') / 'app'
    project = Project(stage_dir, folder, stage_bin, dict(standins.hosts), keyscan=KEYSCAN)
    project.ssh_as_reader()
    project.env.update(
        ALERT_SMTP='127.0.0.1:2525', ALERT_FROM='alerts@example.com', ALERT_TO='you@example.com'
    )
    return project


def test_the_readme_commands_are_those_run_here(stage_dir):
    commands = [
        line
        for heading in ('Deploy it', 'Watch it')
        for line in readme_commands(stage_dir, heading)
    ]
    assert sorted(commands) == sorted(RUNS + RUN_BY_STAGE_06 + NOT_RUN)
    assert same_in(STAGES['06'], stage_dir, ['deploy/rollback.py', 'deploy/app-deploy-release'])


@pytest.fixture(scope='module')
def watched(project, tmp_path_factory):
    """Every server provisioned, the stage deployed to staging and production, and the
    monitoring server told the sites' names and made to trust their self-signed
    certificates (what DNS and a real CA do for a reader's sites)."""
    started = time.monotonic()
    for command in (PROVISION_BACKUP, PROVISION):
        run_readme(project, command)
    monitor = project.servers['monitor']
    folder = tmp_path_factory.mktemp('tls')
    for env, domain in DOMAINS.items():
        host = project.servers[env]
        ssh(monitor, f'echo "{host.address} {domain}" >> /etc/hosts')
        pem = certificate(host, folder).read_text()
        ssh(monitor, f'cat > /usr/local/share/ca-certificates/{env}.crt', input=pem)
    ssh(monitor, 'update-ca-certificates --fresh >/dev/null')
    sink_on(monitor)
    run_readme(project, PROVISION_MONITOR)
    print(f'provisioned the four servers in {time.monotonic() - started:.1f} s')
    project.build()
    run_readme(project, 'pyinfra inventory.py release.py --limit staging')
    run_readme(project, 'pyinfra inventory.py release.py --limit production')
    return {
        env: site(project.servers[env], env, folder / project.servers[env].name) for env in DOMAINS
    }


def targets(project):
    """Prometheus's targets, from the README's command: (health, job, instance, error)."""
    listed = json.loads(run_readme(project, TARGETS).stdout)['data']['activeTargets']
    return sorted(
        (t['health'], t['labels']['job'], t['labels']['instance'], t['lastError']) for t in listed
    )


def test_prometheus_scrapes_every_target(project, watched):
    deadline = time.monotonic() + 180
    found = targets(project)
    while {target[0] for target in found} != {'up'}:
        assert time.monotonic() < deadline, found
        time.sleep(5)
        found = targets(project)
    jobs = [target[1] for target in found]
    assert sorted(jobs) == sorted(['node'] * 4 + ['postgres'] * 2 + ['app'] * 2 + ['site'] * 2)


def test_the_exporters_answer_the_monitoring_server_alone(project, watched):
    """From here (the internet, for the servers) no exporter port answers, and the
    app's /metrics over HTTPS is 404; from the monitoring server they answer."""
    monitor = project.servers['monitor']
    for env in DOMAINS:
        host = project.servers[env]
        for port in EXPORTERS:
            refused = project.run(
                'curl',
                '-s',
                '--max-time',
                '3',
                f'http://{host.address}:{port}/metrics',
                check=False,
            )
            assert refused.returncode in (7, 28), (env, port)  # refused, or no answer
            answered = ssh(monitor, f'curl -s --max-time 5 http://{host.address}:{port}/metrics')
            assert '# TYPE' in answered, (env, port, answered[:200])
        assert watched[env].get('/metrics').status == 404


def mails(monitor):
    """The subjects of the mails in the sink, oldest first."""
    listed = ssh(monitor, f'grep -h "^Subject:" {SINK}/new/* 2>/dev/null || true')
    return listed.splitlines()


def wait_for_mail(monitor, pattern, since, seconds=600):
    """The subject of the first mail matching ``pattern`` among those after the first
    ``since``; fails after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not (found := [s for s in mails(monitor)[since:] if re.search(pattern, s)]):
        assert time.monotonic() < deadline, mails(monitor)
        time.sleep(5)
    return found[0]


def test_each_fault_is_mailed_and_so_is_its_mending(project, watched):
    """Three faults at once: gunicorn stopped on staging (the site down), PostgreSQL
    stopped on production, and a firewall rule on the backup server that drops the
    monitoring server's scrapes (a target down, not silence). For each, its alert's mail;
    mended, the resolved mail. The times from fault to mail are printed. Production's
    site answers 503 meanwhile, not an error page of nginx's, and both sites are back."""
    monitor = project.servers['monitor']
    staging, production = project.servers['staging'], project.servers['production']
    drop = f'ip saddr {monitor.address} tcp dport 9100 drop'
    faults = {
        'SiteDown staging': (
            staging,
            'systemctl stop app-deploy@staging.socket app-deploy@staging.service',
            'systemctl start app-deploy@staging.socket',
        ),
        'PostgresqlDown production': (
            production,
            'systemctl stop postgresql@17-main',
            'systemctl start postgresql@17-main',
        ),
        'TargetDown backup': (
            project.servers['backup'],
            f'nft insert rule inet filter input {drop}',
            'systemctl restart nftables',  # the rules of /etc/nftables.conf again
        ),
    }
    since = len(mails(monitor))
    started = time.monotonic()
    for host, cause, _ in faults.values():
        ssh(host, cause)
    try:
        assert watched['production'].get('/').status == 503
        fired = {
            alert: (wait_for_mail(monitor, rf'\[FIRING:\d+\] {alert}', since), time.monotonic())
            for alert in faults
        }
    finally:
        for host, _, mend in faults.values():
            ssh(host, mend)
    mended = time.monotonic()
    for env, site_of_env in watched.items():
        assert site_of_env.get('/health').status == 200, env
    for alert in faults:
        wait_for_mail(monitor, rf'\[RESOLVED\] {alert}', since)
        print(
            f'{alert}: mail {fired[alert][1] - started:.0f} s after the fault;'
            f' resolved mail {time.monotonic() - mended:.0f} s after it was mended'
        )


# A release with a bug: the page fails with a 500 when a query string has "fail".
FAILING_VIEW = (
    "    if 'fail' in request.args:\n        raise RuntimeError('a bug in this release')\n"
)


def failed_mails(monitor):
    """How many times Alertmanager has failed to hand a mail to the relay (its counter of
    attempts; alertmanager_notifications_failed_total counts a mail once it gives up)."""
    metrics = ssh(monitor, 'curl -s http://127.0.0.1:9093/metrics')
    failed = r'^alertmanager_notification_requests_failed_total{integration="email"[^}]*} (\S+)$'
    return sum(float(count) for count in re.findall(failed, metrics, re.MULTILINE))


def test_a_release_that_fails_some_requests_burns_the_error_budget(project, watched):
    """Deployed to staging, a release that answers 500 to half the requests, while the
    mail relay is down: Alertmanager fails to send the error budget's fast burn (the
    1-hour window and its 5 minutes), tries again, and the mail arrives once the relay
    is back. Rolled back; the alert ends once its short window has no errors
    (promtool's tests show when)."""
    monitor = project.servers['monitor']
    names = (project.folder / 'app/names.py').read_text()
    broken = names.replace('    form = NameForm()\n', '    form = NameForm()\n' + FAILING_VIEW, 1)
    project.build('A bug on some pages', {'app/names.py': broken})
    run_readme(project, 'pyinfra inventory.py release.py --limit staging')
    since, failed = len(mails(monitor)), failed_mails(monitor)
    ssh(monitor, 'systemctl stop smtp-sink')  # the relay down
    started = time.monotonic()
    answers = [watched['staging'].get(path).status for path in ['/?fail=1', '/'] * 10]
    assert answers == [500, 200] * 10
    try:
        deadline = time.monotonic() + 300
        while failed_mails(monitor) == failed:
            assert time.monotonic() < deadline, 'Alertmanager never tried to send the mail'
            time.sleep(5)
        print(f'relay down: a failed send {time.monotonic() - started:.0f} s after the first 500')
    finally:
        ssh(monitor, f'systemctl reset-failed smtp-sink; {SINK_START}')
    fired = wait_for_mail(monitor, r'\[FIRING:\d+\] ErrorBudgetBurn staging', since)
    print(
        f'error budget burn: mail {time.monotonic() - started:.0f} s after the first 500 ({fired})'
    )
    project.pyinfra('rollback.py', 'staging')
    assert watched['staging'].get('/?fail=1').status == 200


def test_the_runbooks_journal_queries_read_the_apps_lines(project, watched, stage_dir):
    """RUNBOOK.md's three journalctl commands, run as written: the app's lines of the
    last hour (gunicorn's access lines among them), the errors since boot, the last
    minutes of every unit."""
    queries = [
        line
        for _, body in fenced_blocks(stage_dir / 'RUNBOOK.md', 'console')
        for line in body.splitlines()
    ]
    assert len(queries) == 3 and all('journalctl' in query for query in queries), queries
    watched['production'].get('/?from=runbook')
    app, errors, recent = (run_readme(project, query).stdout for query in queries)
    assert re.search(r'"GET /\?from=runbook HTTP/1\.[01]" 200', app), app[-2000:]
    assert 'Database unavailable' in errors, errors[-2000:]  # PostgreSQL stopped, above
    assert 'app-deploy@production' in recent or 'gunicorn' in recent, recent[-2000:]


def test_alertmanager_accepts_a_relay_password_and_a_dead_mans_switch(project, watched):
    """alertmanager.yml as monitor_server.py renders it for a relay that wants a password
    and with DEAD_MANS_SWITCH_URL set (the tests' relay wants none, and there is no switch
    to ping): amtool, Alertmanager's checker, accepts it."""
    monitor = project.servers['monitor']
    template = (project.folder / 'deploy/alertmanager.yml').read_text()
    settings = {'smtp': 'smtp.example.com:587', 'sender': 'alerts@example.com'}
    rendered = jinja2.Template(template).render(
        **settings, to='you@example.com', smtp_password=True, dead_mans_switch=True
    )
    assert 'auth_password_file' in rendered and 'url_file' in rendered
    ssh(monitor, 'cat > /tmp/alertmanager.yml', input=rendered)
    checked = monitor.ssh('amtool check-config /tmp/alertmanager.yml', check=False)
    assert checked.returncode == 0 and 'SUCCESS' in checked.stdout, checked.stdout + checked.stderr
    assert 'require_tls: true' in rendered  # a relay elsewhere: TLS, or no mail


def test_a_broken_rule_is_refused_before_it_reaches_prometheus(project, watched):
    """A rule file promtool refuses stops provisioning with promtool's message, and
    Prometheus keeps the rules it had."""
    monitor = project.servers['monitor']
    rules = 'deploy/prometheus/alerts.yml'
    before = ssh(monitor, 'sha256sum /etc/prometheus/app-deploy-alerts.yml')
    good = (project.folder / rules).read_text()
    broken = good.replace(
        'expr: probe_success{job="site"} == 0', 'expr: probe_success{job="site"} =='
    )
    assert broken != good
    project.commit('A rule cut short', {rules: broken})
    try:
        refused = run_readme(project, PROVISION_MONITOR, check=False)
    finally:
        project.commit('The rule mended', {rules: good})
    assert refused.returncode == 1 and 'FAILED' in refused.stdout, refused.stdout  # promtool's
    assert ssh(monitor, 'sha256sum /etc/prometheus/app-deploy-alerts.yml') == before
    assert ssh(monitor, 'systemctl is-active prometheus') == 'active'


def test_the_sites_serve_with_the_monitoring_server_gone(project, watched, standins):
    """Nothing on staging or production waits for the monitoring server."""
    standins.lose('monitor', power_cut=True)
    for env, site_of_env in watched.items():
        assert site_of_env.get('/').status == 200, env
        site_of_env.add(f'Written with no monitor ({env})')  # asserts the 302
        assert f'Written with no monitor ({env})' in site_of_env.names()
