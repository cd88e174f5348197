"""The app's own metrics, for Prometheus: each request counted and timed, at /metrics.

Under gunicorn each worker is a process of its own. With PROMETHEUS_MULTIPROC_DIR set
(the systemd unit sets it), every worker writes its numbers to files in that folder,
and /metrics adds up all of them, those of workers that have since ended too. Without
it (flask run, pytest: one process), the numbers live in this process and /metrics
shows them: the app works the same, so nothing but gunicorn has to set the folder.
"""

import os
import time

from flask import Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

# Labelled by the route (the view's URL rule: / for every /?page=N), never the path
# asked for: any client can invent paths, and each label value is a time series of
# its own in Prometheus. A request that no route matches counts as route "none".
REQUESTS = Counter(
    'app_http_requests',  # exposed as app_http_requests_total
    'HTTP requests answered, by method, route and status.',
    ['method', 'route', 'status'],
)
DURATION = Histogram(
    'app_http_request_duration_seconds',
    'Time from a request reaching the app to its answer, by method and route.',
    ['method', 'route'],
    # From a page in 5 ms to the 5 s a request may wait for a database connection.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def init_app(app):
    """Count and time every request of ``app``, and serve the numbers at /metrics."""
    app.before_request(start_timer)
    app.after_request(record)
    app.add_url_rule('/metrics', view_func=metrics)


def count_errors_from_zero(app):
    """Make each route's count of 500 and 503 (the app's own errors) exist at 0, so that
    Prometheus sees the first ones: to rate(), a count first seen at 3 has risen by 0."""
    for rule in app.url_map.iter_rules():
        for method in rule.methods - {'HEAD', 'OPTIONS'}:
            for status in (500, 503):
                REQUESTS.labels(method, rule.rule, status)


def start_timer():
    g.request_started = time.perf_counter()


def record(response):
    route = request.url_rule.rule if request.url_rule else 'none'
    REQUESTS.labels(request.method, route, response.status_code).inc()
    elapsed = time.perf_counter() - g.request_started
    DURATION.labels(request.method, route).observe(elapsed)
    return response


def metrics():
    """Every worker's numbers, in Prometheus' text format."""
    if 'PROMETHEUS_MULTIPROC_DIR' in os.environ:
        # A registry for this answer alone, which reads the workers' files.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY  # this process's own metrics
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
