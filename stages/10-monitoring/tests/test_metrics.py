"""The app's own metrics: requests counted and timed, and served at /metrics.

pytest is one process, so the numbers are this process's (app/metrics.py), and they
add up across the tests: each test compares them before and after what it does.
"""

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families


def requests_counted(method, route, status):
    labels = {'method': method, 'route': route, 'status': status}
    return REGISTRY.get_sample_value('app_http_requests_total', labels) or 0


def test_requests_are_counted_by_method_route_and_status(client):
    before = {
        'page': requests_counted('GET', '/', '200'),
        'missing page': requests_counted('GET', '/', '404'),
        'health': requests_counted('GET', '/health', '200'),
        'post': requests_counted('POST', '/', '302'),
    }
    for _ in range(3):
        client.get('/')
    client.get('/?page=2')  # no names, so no second page: 404, from the route /
    client.get('/health')
    client.post('/', data={'name': 'Ada'})
    assert requests_counted('GET', '/', '200') == before['page'] + 3
    assert requests_counted('GET', '/', '404') == before['missing page'] + 1
    assert requests_counted('GET', '/health', '200') == before['health'] + 1
    assert requests_counted('POST', '/', '302') == before['post'] + 1


def test_a_path_no_route_matches_counts_as_route_none(client):
    before = requests_counted('GET', 'none', '404')
    assert client.get('/no-such-page').status_code == 404
    assert client.get('/another/made-up/path').status_code == 404
    assert requests_counted('GET', 'none', '404') == before + 2
    assert requests_counted('GET', '/no-such-page', '404') == 0  # never the path itself


def test_each_request_is_timed(client):
    labels = {'method': 'GET', 'route': '/health'}

    def sample(suffix, **more):
        return REGISTRY.get_sample_value(
            f'app_http_request_duration_seconds{suffix}', {**labels, **more}
        )

    count = sample('_count') or 0
    total = sample('_sum') or 0
    within_5s = sample('_bucket', le='5.0') or 0
    client.get('/health')
    assert sample('_count') == count + 1
    assert sample('_sum') > total
    assert sample('_bucket', le='5.0') == within_5s + 1


def test_metrics_are_served_in_prometheus_text_format(client):
    client.get('/')
    response = client.get('/metrics')
    assert response.status_code == 200
    assert response.mimetype == 'text/plain'
    text = response.get_data(as_text=True)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families['app_http_requests'].type == 'counter'  # its samples end in _total
    assert families['app_http_request_duration_seconds'].type == 'histogram'
    labels = {'method': 'GET', 'route': '/', 'status': '200'}
    (page,) = [
        sample
        for sample in families['app_http_requests'].samples
        if sample.name == 'app_http_requests_total' and sample.labels == labels
    ]
    assert page.value == requests_counted('GET', '/', '200') >= 1
