"""What production serving adds: errors pages, health, timeouts, the proxy, cookies, logs."""

import re
import socket

import pytest
from flask import request

from app import create_app, db
from app.models import Name
from config import TestingConfig

# What nginx adds to each request it passes on (deploy/nginx.conf).
NGINX = {
    'X-Forwarded-For': '203.0.113.7',
    'X-Forwarded-Proto': 'https',
    'X-Forwarded-Host': 'example.com',
}
UNAVAILABLE = 'The database cannot be reached right now.'


def stored_names(app):
    with app.app_context():
        return db.session.scalars(db.select(Name.name).order_by(Name.id)).all()


def assert_unavailable(response):
    assert response.status_code == 503
    assert int(response.headers['Retry-After']) > 0
    assert UNAVAILABLE in response.get_data(as_text=True)


# Error pages


@pytest.mark.parametrize(
    'method, path, status, text',
    [
        ('GET', '/no-such-page', 404, '404 Not Found'),
        ('PUT', '/', 405, '405 Method Not Allowed'),
        ('POST', '/health', 405, '405 Method Not Allowed'),
        ('GET', '/?page=0', 404, '404 Not Found'),
        ('GET', '/?page=abc', 404, '404 Not Found'),
        ('GET', '/?page=99999999999999999999', 404, '404 Not Found'),
        ('GET', f'/?page={2**63 // 50 + 2}', 404, '404 Not Found'),  # offset > bigint
    ],
)
def test_error_pages(client, method, path, status, text):
    response = client.open(path, method=method)
    assert response.status_code == status
    page = response.get_data(as_text=True)
    assert f'<h1>{text}</h1>' in page
    assert 'Back to the names' in page


def test_method_not_allowed_says_what_is(client):
    assert set(client.put('/').headers['Allow'].split(', ')) == {'GET', 'HEAD', 'POST', 'OPTIONS'}


def test_large_body_is_refused_and_nothing_stored(app, client):
    response = client.post('/', data={'name': 'x' * 100_000})
    assert response.status_code == 413
    assert '413 Request Entity Too Large' in response.get_data(as_text=True)
    assert stored_names(app) == []


def test_unexpected_error_gets_a_page_and_the_traceback_goes_to_the_log(production_app, capfd):
    app = create_app('production')  # after capfd, so that its log goes there

    @app.route('/boom')
    def boom():
        raise RuntimeError('secret detail')

    response = app.test_client().get('/boom', headers=NGINX)
    assert response.status_code == 500
    page = response.get_data(as_text=True)
    assert '<h1>500 Internal Server Error</h1>' in page
    assert 'Traceback' not in page and 'secret detail' not in page
    log = capfd.readouterr().err.splitlines()
    assert '<3>app: Exception on /boom [GET]' in log  # journal style: priority, no time
    assert '<3>RuntimeError: secret detail' in log  # each line of the traceback too
    assert all(line.startswith('<3>') for line in log), log


# Pagination


def test_names_are_paginated_newest_first(app, client):
    app.config['NAMES_PER_PAGE'] = 2
    with app.app_context():
        db.session.add_all(Name(name=f'name {number}') for number in range(1, 6))
        db.session.commit()

    def listed(page):
        return re.findall(r'<li>(.*?), added', page)

    first = client.get('/').get_data(as_text=True)
    assert listed(first) == ['name 5', 'name 4']
    assert 'href="/?page=2">Older names' in first
    assert 'Newer names' not in first
    last = client.get('/?page=3').get_data(as_text=True)
    assert listed(last) == ['name 1']
    assert 'href="/?page=2">Newer names' in last
    assert 'Older names' not in last
    assert client.get('/?page=4').status_code == 404


def test_page_size_is_bounded_by_the_settings(app, client):
    with app.app_context():
        db.session.add_all(Name(name=f'n{number}') for number in range(60))
        db.session.commit()
    page = client.get('/?per_page=1000').get_data(as_text=True)
    assert page.count('<li>') == app.config['NAMES_PER_PAGE'] == 50


def test_many_names_make_a_small_page(app, client):
    """100,000 names made a 3 MB page; now a page holds 50 of them, whatever the count."""
    with app.app_context():
        db.session.execute(
            db.text(
                "INSERT INTO names (name) SELECT 'name ' || n FROM generate_series(1, 100000) n"
            )
        )
        db.session.commit()
    response = client.get('/')
    assert response.status_code == 200
    assert response.get_data(as_text=True).count('<li>') == 50
    assert len(response.data) < 20_000
    assert client.get('/?page=2000').status_code == 200  # the last page
    assert client.get('/?page=2001').status_code == 404


# Health


def test_health_when_the_database_answers(client):
    response = client.get('/health')
    assert response.status_code == 200
    assert response.get_json() == {'status': 'ok'}


@pytest.fixture
def unreachable_app(monkeypatch):
    """The testing app pointed at a port where no database listens."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv('TEST_DATABASE_URL', f'postgresql://nobody@127.0.0.1:{port}/none')
    return create_app('testing')


def test_health_and_page_when_the_database_is_down(unreachable_app):
    client = unreachable_app.test_client()
    response = client.get('/health')
    assert response.status_code == 503
    assert int(response.headers['Retry-After']) > 0
    assert response.get_json() == {'status': 'unavailable'}  # no detail for an attacker
    assert_unavailable(client.get('/'))
    assert_unavailable(client.post('/', data={'name': 'Mark'}))


def test_silent_database_gives_503_after_connect_timeout(monkeypatch):
    """A server that accepts connections but never answers: libpq's connect_timeout."""
    with socket.socket() as silent:
        silent.bind(('127.0.0.1', 0))
        silent.listen()
        port = silent.getsockname()[1]
        monkeypatch.setenv('TEST_DATABASE_URL', f'postgresql://nobody@127.0.0.1:{port}/none')
        assert_unavailable(create_app('testing').test_client().get('/'))


# Timeouts: every wait for the database ends in the 503 page


def lock_names(app):
    """A connection of its own that locks the names table, as a long migration would."""
    with app.app_context():
        connection = db.engine.connect()
    connection.exec_driver_sql('LOCK TABLE names IN ACCESS EXCLUSIVE MODE')
    return connection


def test_locked_table_gives_503_not_a_hung_request(app, client):
    with lock_names(app) as connection:
        assert_unavailable(client.get('/'))
        assert_unavailable(client.post('/', data={'name': 'during'}))
        assert client.get('/health').status_code == 200  # the database itself answers
        connection.rollback()
    assert client.post('/', data={'name': 'after'}).status_code == 302
    assert stored_names(app) == ['after']


def test_slow_statement_gives_503(app, client):
    @app.route('/slow')
    def slow():
        # The app's statement_timeout, shortened for this transaction alone.
        db.session.execute(db.text("SET LOCAL statement_timeout = '100ms'"))
        db.session.execute(db.text('SELECT pg_sleep(5)'))

    assert_unavailable(client.get('/slow'))


def test_timeouts_reach_postgresql(app):
    with app.app_context():
        settings = db.session.execute(
            db.text("SELECT current_setting('statement_timeout'), current_setting('lock_timeout')")
        ).one()
    assert settings == ('10s', '3s')


def test_exhausted_pool_gives_503(app, monkeypatch):
    """More requests than pooled connections, as with threaded workers under load."""
    options = {**TestingConfig.SQLALCHEMY_ENGINE_OPTIONS, 'pool_size': 1, 'max_overflow': 0}
    monkeypatch.setattr(TestingConfig, 'SQLALCHEMY_ENGINE_OPTIONS', {**options, 'pool_timeout': 1})
    small = create_app('testing')
    with small.app_context():
        held = db.engine.connect()  # the pool's only connection
    with held:
        assert_unavailable(small.test_client().get('/'))


# Behind nginx: the proxy's headers, the host, the cookie


@pytest.fixture
def whoami(production_app):
    """A client of the production app, with a page that shows what the app sees."""

    @production_app.route('/whoami')
    def whoami():
        return {
            'address': request.remote_addr,
            'scheme': request.scheme,
            'host': request.host,
            'url': request.url,
        }

    return production_app.test_client()


def test_proxy_headers_of_one_hop_are_trusted(whoami):
    seen = whoami.get('/whoami', headers=NGINX).get_json()
    assert seen == {
        'address': '203.0.113.7',
        'scheme': 'https',
        'host': 'example.com',
        'url': 'https://example.com/whoami',
    }


def test_a_forged_extra_hop_is_ignored(whoami):
    """A client sends its own X-Forwarded-* headers; a proxy adding to them keeps the
    client's values first. The app trusts only the last one, the one nginx added, and
    only in the headers nginx sets."""
    forged = {
        'X-Forwarded-For': '198.51.100.1, 203.0.113.7',
        'X-Forwarded-Proto': 'https, https',
        'X-Forwarded-Host': 'evil.example, example.com',
        'X-Forwarded-Port': '8443',  # nginx does not set it: not trusted
        'X-Forwarded-Prefix': '/evil',
    }
    seen = whoami.get('/whoami', headers=forged).get_json()
    assert seen == {
        'address': '203.0.113.7',
        'scheme': 'https',
        'host': 'example.com',
        'url': 'https://example.com/whoami',
    }


@pytest.mark.parametrize('host', ['evil.example', 'example.com.evil.example'])
def test_unknown_host_is_refused(whoami, host):
    response = whoami.get('/whoami', headers={**NGINX, 'X-Forwarded-Host': host})
    assert response.status_code == 400
    assert '<h1>400 Bad Request</h1>' in response.get_data(as_text=True)


def test_session_cookie_is_secure_httponly_and_lax(production_app):
    response = production_app.test_client().get('/', headers=NGINX)
    assert response.status_code == 200
    cookie = response.headers['Set-Cookie']  # the session, holding the CSRF token
    assert cookie.startswith('session=')
    assert {'Secure', 'HttpOnly', 'SameSite=Lax'} <= {part.strip() for part in cookie.split(';')}


def test_post_over_https_needs_a_matching_referrer(production_app):
    """Flask-WTF checks the Referer on HTTPS: it sees HTTPS through the proxy's header."""
    client = production_app.test_client()
    page = client.get('/', headers=NGINX).get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)[1]
    data = {'name': 'Mark', 'csrf_token': token}
    other = {**NGINX, 'Referer': 'https://evil.example/'}
    assert client.post('/', data=data, headers=other).status_code == 400
    same = {**NGINX, 'Referer': 'https://example.com/'}
    assert client.post('/', data=data, headers=same).status_code == 302
    assert stored_names(production_app) == ['Mark']


def test_database_errors_are_logged_for_the_journal(production_app, monkeypatch, capfd):
    monkeypatch.setenv('PRODUCTION_DATABASE_URL', 'postgresql://nobody@127.0.0.1:1/none')
    app = create_app('production')
    assert_unavailable(app.test_client().get('/', headers=NGINX))
    lines = capfd.readouterr().err.splitlines()
    assert any(line.startswith('<3>app: Database unavailable: ') for line in lines), lines
