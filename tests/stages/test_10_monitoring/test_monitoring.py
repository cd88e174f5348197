"""Stage 10 end to end: a fourth server watches the others, and mails what is wrong.

Four Debian 13 stand-in servers boot with systemd (tools/standin/): backup, staging,
production, and monitor, which may reach the others' exporters and sites, and which
the tests give an SMTP sink in place of the reader's relay (Debian's python3-aiosmtpd).
The tests run the README's commands from a git copy of the stage, as a reader does,
then check that Prometheus scrapes every target, that the exporters are closed to
everyone but the monitoring server, and that each fault caused is mailed, and its
mending too, with the time from fault to mail printed (pytest -s). Alerts that wait
long by design (10 minutes of failed archiving) wait less here: their rules' ``for:``
is shortened on the monitoring server for the test, and the backups' status runs
every 30 s rather than 5 minutes.
"""

import contextlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
import urllib.parse

import jinja2
import pytest
import urllib3
import yaml

from tests.helpers.deploy import (
    DOMAINS,
    FINGERPRINTS,
    PIN,
    Project,
    Standins,
    certificate,
    disk_full,
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
# Prometheus's pages, forwarded to this machine (the README's way); Alertmanager's alerts.
FORWARD = 'ssh -N -L 9090:127.0.0.1:9090 root@"$MONITOR_HOST"'
PROMETHEUS = 'http://127.0.0.1:9090'
AMTOOL = 'ssh root@"$MONITOR_HOST" amtool alert query --alertmanager.url=http://127.0.0.1:9093'
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
    FORWARD,
    AMTOOL,
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


# What a server's processes use: each one's share of the memory it maps (PSS: a page
# that n processes share counts 1/n each), summed; and its root file system, in MiB.
MEMORY = "cat /proc/[0-9]*/smaps_rollup 2>/dev/null | awk '/^Pss:/ {kb += $2} END {print int(kb / 1024)}'"
DISK = 'du -sxm / | cut -f1'
PLAN = 1024  # MiB: the smallest plans of the large clouds


def test_each_server_runs_within_a_1_gb_plan(project, watched):
    """Each server's memory and disk in use with everything of Parts 5 to 10 running,
    printed against 1 GB and 512 MB plans; each leaves a quarter of 1 GB for the kernel
    and the page cache. (node_exporter's node_memory_MemAvailable_bytes says this on a
    real server; in a stand-in it reads the machine's memory, not the server's.)"""
    print('| server | memory (MiB) | disk (MiB) | within 512 MB |')
    print('|---|---|---|---|')
    for name, host in project.servers.items():
        memory, disk = int(ssh(host, MEMORY)), int(ssh(host, DISK))
        print(f'| {name} | {memory} | {disk} | {"yes" if memory < PLAN / 2 * 0.75 else "no"} |')
        assert 0 < memory < PLAN * 0.75, name
    monitor = project.servers['monitor']
    series = query(monitor, 'count({__name__=~".+"})')[0]['value'][1]
    stored = ssh(monitor, 'du -sm /var/lib/prometheus | cut -f1')
    print(f'Prometheus: {series} series, {stored} MiB stored so far')


def query(monitor, promql):
    """What Prometheus answers ``promql`` now, on the monitoring server: its result list."""
    url = f'http://127.0.0.1:9090/api/v1/query?query={urllib.parse.quote(promql)}'
    return json.loads(ssh(monitor, f"curl -s '{url}'"))['data']['result']


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


@contextlib.contextmanager
def caused(host, cause, mend):
    """The fault ``cause`` (a command) on ``host`` for the block, then ``mend``."""
    ssh(host, cause)
    try:
        yield
    finally:
        ssh(host, mend)


def mailed_and_mended(monitor, alerts, faults, meanwhile):
    """Cause ``faults`` (context managers) together, run ``meanwhile``, and wait for the
    mail of each of ``alerts`` (its name and environment, as in a mail's subject); mend
    the faults, and wait for each resolved mail. Prints the time from the faults to each
    mail, and from the mending to each resolved mail."""
    since = len(mails(monitor))
    started = time.monotonic()
    with contextlib.ExitStack() as causing:
        for fault in faults:
            causing.enter_context(fault)
        meanwhile()
        fired = {}
        for alert in alerts:
            wait_for_mail(monitor, rf'\[FIRING:\d+\] {alert}', since)
            fired[alert] = time.monotonic() - started
    mended = time.monotonic()
    for alert in alerts:
        wait_for_mail(monitor, rf'\[RESOLVED\] {alert}', since)
        print(
            f'{alert}: mail {fired[alert]:.0f} s after the fault;'
            f' resolved mail {time.monotonic() - mended:.0f} s after it was mended'
        )


def test_each_fault_is_mailed_and_so_is_its_mending(project, watched):
    """Three faults at once: gunicorn stopped on staging (the site down), PostgreSQL
    stopped on production, and a firewall rule on the backup server that drops the
    monitoring server's scrapes (a target down, not silence). For each, its alert's mail;
    mended, the resolved mail. Production's site answers 503 meanwhile, not an error page
    of nginx's, and both sites are back."""
    staging, production = project.servers['staging'], project.servers['production']
    drop = f'ip saddr {project.servers["monitor"].address} tcp dport 9100 drop'
    faults = {
        'SiteDown staging': caused(
            staging,
            'systemctl stop app-deploy@staging.socket app-deploy@staging.service',
            'systemctl start app-deploy@staging.socket',
        ),
        'PostgresqlDown production': caused(
            production, 'systemctl stop postgresql@17-main', 'systemctl start postgresql@17-main'
        ),
        'TargetDown backup': caused(
            project.servers['backup'],
            f'nft insert rule inet filter input {drop}',
            'systemctl restart nftables',  # the rules of /etc/nftables.conf again
        ),
    }

    def meanwhile():
        assert watched['production'].get('/').status == 503

    mailed_and_mended(project.servers['monitor'], faults, faults.values(), meanwhile)
    for env, site_of_env in watched.items():
        assert site_of_env.get('/health').status == 200, env


def shortened(rules, waits):
    """``rules`` (alerts.yml's text) with the ``for:`` of each alert named in ``waits``
    ({alert: duration}) made that duration."""
    groups = yaml.safe_load(rules)
    for rule in (rule for group in groups['groups'] for rule in group['rules']):
        if rule.get('alert') in waits:
            rule['for'] = waits[rule['alert']]
    return yaml.safe_dump(groups, sort_keys=False)


def test_shortened_rules_wait_less_and_are_otherwise_the_same(stage_dir):
    rules = (stage_dir / 'deploy/prometheus/alerts.yml').read_text()
    before = yaml.safe_load(rules)['groups']
    after = yaml.safe_load(shortened(rules, {'WalArchivingFailing': '1m'}))['groups']
    changed = [
        (old, new)
        for old_group, new_group in zip(before, after, strict=True)
        for old, new in zip(old_group['rules'], new_group['rules'], strict=True)
        if old != new
    ]
    assert [(old['alert'], old['for'], new) for old, new in changed] == [
        ('WalArchivingFailing', '10m', {**changed[0][0], 'for': '1m'})
    ]


STATUS_TIMER = '/run/systemd/system/app-deploy-backup-status@.timer.d'
RULES = '/etc/prometheus/app-deploy-alerts.yml'


@contextlib.contextmanager
def sooner(project, waits):
    """For the block, time compressed: the alerts named in ``waits`` wait that long
    (``shortened``), and the backups' status is reported every 30 s, not 5 minutes
    (a drop-in in /run, which a reboot forgets)."""
    monitor = project.servers['monitor']
    rules = (project.folder / 'deploy/prometheus/alerts.yml').read_text()
    ssh(monitor, f'cat > {RULES} && systemctl reload prometheus', input=shortened(rules, waits))
    for env in DOMAINS:
        ssh(
            project.servers[env],
            f'mkdir -p {STATUS_TIMER} && printf "[Timer]\\nOnUnitActiveSec=30s\\n"'
            f' > {STATUS_TIMER}/sooner.conf && systemctl daemon-reload'
            f' && systemctl restart app-deploy-backup-status@{env}.timer',
        )
    try:
        yield
    finally:
        for env in DOMAINS:
            ssh(
                project.servers[env],
                f'rm -r {STATUS_TIMER} && systemctl daemon-reload'
                f' && systemctl restart app-deploy-backup-status@{env}.timer',
            )
        ssh(monitor, f'cat > {RULES} && systemctl reload prometheus', input=rules)


@contextlib.contextmanager
def serving_the_certificate_of(host, other):
    """For the block, nginx on ``host`` serves ``other``'s certificate: another name."""
    tls = '/etc/app-deploy/tls'
    ssh(host, f'cp -a {tls} {tls}.kept')
    for name in ('fullchain.pem', 'privkey.pem'):
        ssh(host, f'cat > {tls}/{name}', input=ssh(other, f'cat {tls}/{name}') + '\n')
    ssh(host, 'systemctl reload nginx')
    try:
        yield
    finally:
        ssh(host, f'rm -r {tls} && mv {tls}.kept {tls} && systemctl reload nginx')


def probe(monitor, env):
    """The blackbox exporter's account of its probe of ``env``'s site."""
    target = f'https://{DOMAINS[env]}/health'
    return ssh(
        monitor,
        f"curl -s 'http://127.0.0.1:9115/probe?module=https_2xx&debug=true&target={target}'",
    )


def test_a_full_disk_a_lost_backup_server_and_a_wrong_certificate_are_mailed(project, watched):
    """Three more faults at once, with time compressed (``sooner``): the backup server's
    disk full, under production's repository, so that production's WAL cannot be
    archived; staging cut off from the backup server, whose backups it then cannot read;
    and staging's nginx serving production's certificate. Each alert's mail, then the
    resolved mails; no WAL is lost, and production serves throughout."""
    monitor = project.servers['monitor']
    staging, production, backup = (project.servers[n] for n in ('staging', 'production', 'backup'))
    alerts = [
        'DiskFull backup',
        'WalArchivingFailing production',
        'BackupTooOld staging',
        'SiteDown staging',
    ]
    faults = [
        disk_full(backup, '/srv/backups/production/repo'),
        standin.cut_off(staging, backup),
        serving_the_certificate_of(staging, production),
    ]

    def meanwhile():
        watched['production'].add('Written while the backup disk was full')
        psql = 'runuser -u postgres -- psql -qAt -c'
        ssh(production, f'{psql} "SELECT pg_switch_wal()"')  # a segment for the archiver
        assert watched['production'].get('/').status == 200
        wrong = f'x509: certificate is valid for {DOMAINS["production"]}, not {DOMAINS["staging"]}'
        assert wrong in probe(monitor, 'staging')

    with sooner(project, {'DiskFull': '1m', 'WalArchivingFailing': '1m'}):
        mailed_and_mended(monitor, alerts, faults, meanwhile)
    assert 'probe_success 1' in probe(monitor, 'staging')
    assert 'Written while the backup disk was full' in watched['production'].names()


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


@contextlib.contextmanager
def visitors(site, paths, seconds=900):
    """For the block (at most ``seconds``), a request to ``site`` every half second,
    taking ``paths`` in turn: a steady rate for Prometheus's graph."""
    stop = threading.Event()

    def visit():
        deadline = time.monotonic() + seconds
        for path in itertools.cycle(paths):
            if stop.wait(0.5) or time.monotonic() > deadline:
                return
            with contextlib.suppress(urllib3.exceptions.HTTPError):
                site.get(path)

    thread = threading.Thread(target=visit)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def prometheus_pages(project):
    """Prometheus's pages on this machine's port 9090, by the README's ssh command, for
    the block."""
    forwarding = subprocess.Popen(
        ['bash', '-c', FORWARD],
        cwd=project.folder / 'deploy',
        env=project.env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(
            ['curl', '-sf', f'{PROMETHEUS}/-/ready'], capture_output=True
        ).returncode:
            assert forwarding.poll() is None and time.monotonic() < deadline, 'no forwarding'
            time.sleep(0.5)
        yield PROMETHEUS
    finally:
        os.killpg(forwarding.pid, signal.SIGTERM)
        forwarding.wait()


# The graph in the docs: requests per second on staging, by status, over 6 minutes.
GRAPH = 'sum by (status) (rate(app_http_requests_total{env="staging"}[1m]))'


def test_a_release_that_fails_some_requests_burns_the_error_budget_in_a_browser(
    project, watched, page, screenshot
):
    """Deployed to staging, a release that answers 500 to some requests (visitors ask
    for two pages in turn, one of which it breaks), while the mail relay is down:
    Alertmanager fails to send the error budget's fast burn (the 1-hour window and its
    5 minutes), tries again, and the mail arrives once the relay is back. Prometheus's
    pages show the alert firing and, once rolled back, the requests by status across
    the two deploys (the docs' screenshots). Rolled back, the fast burn's page ends
    once its 5-minute window has no errors; the slower windows' alerts go on (the
    6-hour one until its 30 minutes are clean, the 3-day ticket for 6 hours), as they
    should after a release that spent this much of the budget."""
    from playwright.sync_api import expect

    monitor = project.servers['monitor']
    names = (project.folder / 'app/names.py').read_text()
    broken = names.replace('    form = NameForm()\n', '    form = NameForm()\n' + FAILING_VIEW, 1)
    since = len(mails(monitor))
    with visitors(watched['staging'], ['/', '/?fail=1']), prometheus_pages(project) as web:
        time.sleep(120)  # a steady rate before the deploy
        project.build('A bug on some pages', {'app/names.py': broken})
        failed = failed_mails(monitor)
        ssh(monitor, 'systemctl stop smtp-sink')  # the relay down
        try:
            run_readme(project, 'pyinfra inventory.py release.py --limit staging')
            started = time.monotonic()
            answers = [watched['staging'].get(path).status for path in ['/?fail=1', '/'] * 10]
            assert answers == [500, 200] * 10
            deadline = time.monotonic() + 300
            while failed_mails(monitor) == failed:
                assert time.monotonic() < deadline, 'Alertmanager never tried to send the mail'
                time.sleep(5)
            print(
                f'relay down: a failed send {time.monotonic() - started:.0f} s after the release'
            )
        finally:
            ssh(monitor, f'systemctl reset-failed smtp-sink; {SINK_START}')
        wait_for_mail(monitor, r'\[FIRING:\d+\] ErrorBudgetBurn staging', since)
        print(f'error budget burn: mail {time.monotonic() - started:.0f} s after the release')
        assert re.search(r'^ErrorBudgetBurn ', run_readme(project, AMTOOL).stdout, re.MULTILINE)
        page.set_viewport_size({'width': 960, 'height': 800})
        page.goto(f'{web}/classic/alerts')
        page.get_by_text('Inactive (').click()  # the firing alerts alone
        page.get_by_text('ErrorBudgetBurn').first.click()  # its rule and its alerts
        expect(page.get_by_text('FIRING').first).to_be_visible()
        page.evaluate('window.scrollTo(0, 0)')
        screenshot(page, 'alerts')
        project.pyinfra('rollback.py', 'staging')
        rolled_back = time.monotonic()
        assert watched['staging'].get('/?fail=1').status == 200
        time.sleep(120)  # a steady rate after the rollback
        query = urllib.parse.urlencode({'g0.expr': GRAPH, 'g0.tab': '0', 'g0.range_input': '6m'})
        page.goto(f'{web}/classic/graph?{query}')
        expect(page.locator('.graph_area svg').first).to_be_visible()
        screenshot(page.locator('#graph0'), 'graph')  # the graph and its legend
    while '1h' in (windows := burning(monitor)):
        assert time.monotonic() < rolled_back + 600, windows
        time.sleep(5)
    print(
        f'error budget burn: the page ended {time.monotonic() - rolled_back:.0f} s after the'
        f' rollback; still firing: the {" and ".join(sorted(windows))} windows'
    )


def burning(monitor):
    """The windows of staging's ErrorBudgetBurn alerts firing now, from Prometheus."""
    firing = 'ALERTS{alertname="ErrorBudgetBurn",env="staging",alertstate="firing"}'
    return {alert['metric']['window'] for alert in query(monitor, firing)}


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
