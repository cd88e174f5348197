"""The app's metrics (``app/metrics.py``) served as in production, on loopback: several
gunicorn workers behind nginx, and the monitoring server's block of ``deploy/nginx.conf``
(``tools/loopback.py`` makes 127.0.0.1 the monitor). The counts are exact, whichever
worker served a request and whichever answers /metrics, also after a reload.
"""

import http.client
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers.reader import APP
from tools import loopback

pytestmark = [
    pytest.mark.stages('10'),
    pytest.mark.covers(*APP, 'gunicorn.conf.py', 'deploy/nginx.conf', 'deploy/nginx-tls.conf'),
]

WORKERS = 4  # gunicorn's: processes that each count the requests they serve
REQUESTS = 200  # through nginx, from THREADS clients at once
THREADS = 4
SAMPLE = re.compile(r'^(\w+)\{(.*)\} (\S+)$', re.MULTILINE)
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@pytest.fixture
def site(production_env, database):
    """The stage served as in production, gunicorn with WORKERS behind nginx, on loopback."""
    env = {'WEB_CONCURRENCY': str(WORKERS)}
    with loopback.serve(production_env.dir, production_env.bin, database, env) as site:
        yield site


def client(site):
    """A client of the loopback site: the throwaway certificate trusted, no proxy."""
    http = requests.Session()
    http.trust_env = False  # no proxy or CA bundle from the environment
    http.verify = str(site.certificate)
    return http


def get(site, url):
    with client(site) as http:
        return http.get(url, timeout=30)


def metrics(site):
    """/metrics as the monitoring server reads it: {(name, labels): value}."""
    response = get(site, site.metrics_url + '/metrics')
    assert response.status_code == 200, response.text
    assert response.headers['Content-Type'].startswith('text/plain; version=')
    return {
        (name, frozenset(LABEL.findall(labels))): float(value)
        for name, labels, value in SAMPLE.findall(response.text)
    }


def counted(site, route='/', status='200', method='GET'):
    labels = frozenset({'method': method, 'route': route, 'status': status}.items())
    return metrics(site).get(('app_http_requests_total', labels), 0)


def get_pages(site, count=REQUESTS):
    """GET / ``count`` times over HTTPS, from THREADS clients of their own; the statuses."""

    def pages(share):
        with client(site) as http:
            return [http.get(site.https_url + '/', timeout=30).status_code for _ in range(share)]

    shares = [count // THREADS + (i < count % THREADS) for i in range(THREADS)]
    with ThreadPoolExecutor(THREADS) as pool:
        return [status for statuses in pool.map(pages, shares) for status in statuses]


def workers(site, done, seconds=45):
    """Poll gunicorn's workers until ``done(pids)``; return them."""
    deadline = time.monotonic() + seconds
    while not done(pids := site.worker_pids()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return pids


def test_counts_are_exact_across_workers_and_a_reload(site):
    before = workers(site, lambda pids: len(pids) == WORKERS)
    assert len(before) == WORKERS, before
    start = counted(site)  # nginx's start-up check asked for / already
    assert get_pages(site) == [200] * REQUESTS
    assert counted(site) == start + REQUESTS
    # Served by several workers, each writing files of its own (counter_<pid>.db).
    files = os.listdir(site.dir / 'metrics')
    assert len({name for name in files if name.startswith('counter_')}) >= 2, files

    os.kill(site.gunicorn_pid, signal.SIGHUP)  # as `systemctl reload` does: new workers
    after = workers(site, lambda pids: len(pids) == WORKERS and not set(pids) & set(before))
    assert len(after) == WORKERS and not set(after) & set(before), (before, after)
    assert counted(site) == start + REQUESTS  # the old workers' counts are kept
    assert get_pages(site) == [200] * REQUESTS
    assert counted(site) == start + 2 * REQUESTS


def test_a_missing_page_counts_as_route_none_and_requests_are_timed(site):
    for path in ('/no-such-page', '/another/one'):
        assert get(site, site.https_url + path).status_code == 404
    found = metrics(site)
    none = frozenset({'method': 'GET', 'route': 'none', 'status': '404'}.items())
    assert found[('app_http_requests_total', none)] == 2
    counted = {dict(labels)['route'] for (_, labels), value in found.items() if value}
    assert counted == {'/', 'none'}, counted  # nginx's check of /, and never a path itself
    # Every route's 500 and 503 exist from the start, at 0 (app.metrics.count_errors_from_zero).
    zero = frozenset({'method': 'GET', 'route': '/health', 'status': '500'}.items())
    assert found[('app_http_requests_total', zero)] == 0
    timed = frozenset({'method': 'GET', 'route': '/'}.items())
    assert found[('app_http_request_duration_seconds_count', timed)] >= 1


def test_metrics_are_not_on_the_public_site(site):
    assert get(site, site.https_url + '/metrics').status_code == 404
    assert '/metrics' not in site.gunicorn_log()  # nginx answered, the app never saw it


def test_metrics_are_refused_to_an_address_not_allowed(site):
    """The monitor is 127.0.0.1: a request from 127.0.0.2, another loopback address."""
    url = urlsplit(site.metrics_url)
    connection = http.client.HTTPConnection(
        url.hostname, url.port, timeout=30, source_address=('127.0.0.2', 0)
    )
    try:
        connection.request('GET', '/metrics')
        assert connection.getresponse().status == 403
    finally:
        connection.close()
    assert '/metrics' not in site.gunicorn_log()


def test_the_monitors_port_serves_metrics_alone(site):
    for path in ('/', '/health', '/metrics/'):
        response = get(site, site.metrics_url + path)
        assert response.status_code == 403, path
        assert 'nginx/' not in response.text  # no version, as on the site
