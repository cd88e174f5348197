import subprocess
import sys
from pathlib import Path

import pytest

from app import create_app
from config import ConfigError

URL = 'postgresql://user:secret@localhost:5432/app_deploy'
KEY = 'k' * 32  # as long as production accepts; a real one is random


@pytest.fixture
def environ(monkeypatch):
    """Start each configuration test from an environment with none of our variables."""
    for variable in (
        'SECRET_KEY',
        'DEV_DATABASE_URL',
        'TEST_DATABASE_URL',
        'STAGING_DATABASE_URL',
        'PRODUCTION_DATABASE_URL',
        'TRUSTED_HOSTS',
        'TRUSTED_PROXIES',
        'FLASK_DEBUG',
    ):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


@pytest.fixture(params=['staging', 'production'])
def served(request, environ):
    """Staging or production, its settings all there: each test takes one away."""
    environ.setenv('SECRET_KEY', KEY)
    environ.setenv(f'{request.param.upper()}_DATABASE_URL', URL)
    environ.setenv('TRUSTED_HOSTS', 'example.com, www.example.com')
    return request.param


def test_development(environ):
    environ.setenv('DEV_DATABASE_URL', URL)
    app = create_app('development')
    assert app.config['SQLALCHEMY_DATABASE_URI'].endswith('@localhost:5432/app_deploy')
    assert not app.testing
    assert not app.debug


def test_development_key_is_random_for_each_process(environ):
    """No fixed key: without SECRET_KEY, development makes one when the app starts."""
    environ.setenv('DEV_DATABASE_URL', URL)
    key = create_app('development').config['SECRET_KEY']
    assert len(key) == 64 and key != 'dev'
    assert create_app('development').config['SECRET_KEY'] == key  # one process, one key
    command = 'from config import DevelopmentConfig; print(DevelopmentConfig.SECRET_KEY_FALLBACK)'
    stage = Path(__file__).parent.parent
    other = subprocess.run(
        [sys.executable, '-c', command], cwd=stage, capture_output=True, text=True
    )
    assert other.stdout.strip() not in ('', key)


def test_testing(environ):
    environ.setenv('TEST_DATABASE_URL', URL)
    app = create_app('testing')
    assert app.testing
    assert app.config['WTF_CSRF_ENABLED'] is False


@pytest.mark.parametrize('scheme', ['postgresql', 'postgres'])
def test_url_uses_psycopg2(environ, scheme):
    environ.setenv('DEV_DATABASE_URL', URL.replace('postgresql', scheme))
    app = create_app('development')
    assert app.config['SQLALCHEMY_DATABASE_URI'].startswith('postgresql+psycopg2://')


def test_every_database_wait_is_bounded(environ):
    environ.setenv('DEV_DATABASE_URL', URL)
    options = create_app('development').config['SQLALCHEMY_ENGINE_OPTIONS']
    assert options['pool_timeout'] > 0
    assert options['connect_args']['connect_timeout'] > 0
    assert '-c statement_timeout=' in options['connect_args']['options']
    assert '-c lock_timeout=' in options['connect_args']['options']


def test_served_settings_come_from_the_environment(served):
    app = create_app(served)
    assert app.config['SECRET_KEY'] == KEY
    assert app.config['TRUSTED_HOSTS'] == ['example.com', 'www.example.com']
    assert app.config['MAX_CONTENT_LENGTH'] == 16 * 1024
    assert not app.debug
    assert not app.testing


def test_secrets_can_come_from_files(served, environ, tmp_path):
    """As compose's secrets hand them over: NAME_FILE, the path of a file with NAME."""
    (tmp_path / 'key').write_text(f'{"f" * 64}\n')
    (tmp_path / 'url').write_text(f'{URL}\n')
    environ.delenv('SECRET_KEY')
    environ.delenv(f'{served.upper()}_DATABASE_URL')
    environ.setenv('SECRET_KEY_FILE', str(tmp_path / 'key'))
    environ.setenv(f'{served.upper()}_DATABASE_URL_FILE', str(tmp_path / 'url'))
    app = create_app(served)
    assert app.config['SECRET_KEY'] == 'f' * 64
    assert app.config['SQLALCHEMY_DATABASE_URI'] == URL.replace(
        'postgresql', 'postgresql+psycopg2'
    )


def test_a_secret_file_that_cannot_be_read_fails(served, environ, tmp_path):
    environ.setenv('SECRET_KEY_FILE', str(tmp_path / 'missing'))
    with pytest.raises(ConfigError, match='SECRET_KEY_FILE names a file that cannot be read'):
        create_app(served)


@pytest.mark.parametrize('proxies, trusted', [(None, True), ('1', True), ('0', False)])
def test_forwarded_headers_are_trusted_only_with_a_proxy_in_front(
    served, environ, proxies, trusted
):
    if proxies is not None:
        environ.setenv('TRUSTED_PROXIES', proxies)
    app = create_app(served)
    headers = {'X-Forwarded-Host': 'evil.example', 'Host': 'example.com'}
    answer = app.test_client().get('/no-such-page', headers=headers)  # no database needed
    assert answer.status_code == (400 if trusted else 404)  # 400: evil.example is not ours


def test_an_unknown_number_of_proxies_fails(served, environ):
    environ.setenv('TRUSTED_PROXIES', '2')
    with pytest.raises(ConfigError, match='TRUSTED_PROXIES is 1'):
        create_app(served)


def test_missing_secret_key_fails(served, environ):
    environ.delenv('SECRET_KEY')
    with pytest.raises(ConfigError, match='SECRET_KEY is not set'):
        create_app(served)


@pytest.mark.parametrize('key', ['dev', 'from-the-environment', 'k' * 31])
def test_short_secret_key_fails(served, environ, key):
    environ.setenv('SECRET_KEY', key)
    with pytest.raises(ConfigError, match='SECRET_KEY is too short; use at least 32') as error:
        create_app(served)
    assert key not in str(error.value)  # never print a secret, not even a weak one


@pytest.mark.parametrize('hosts', [None, '', ' , '])
def test_missing_trusted_hosts_fails(served, environ, hosts):
    if hosts is None:
        environ.delenv('TRUSTED_HOSTS')
    else:
        environ.setenv('TRUSTED_HOSTS', hosts)  # an empty list would trust every host
    with pytest.raises(ConfigError, match='TRUSTED_HOSTS is not set'):
        create_app(served)


def test_debugger_is_refused(served, environ):
    """`flask run --debug` sets FLASK_DEBUG before the app is made."""
    environ.setenv('FLASK_DEBUG', '1')
    with pytest.raises(ConfigError, match='FLASK_DEBUG is on'):
        create_app(served)


@pytest.mark.parametrize(
    'name, variable',
    [
        ('development', 'DEV_DATABASE_URL'),
        ('testing', 'TEST_DATABASE_URL'),
        ('staging', 'STAGING_DATABASE_URL'),
        ('production', 'PRODUCTION_DATABASE_URL'),
    ],
)
def test_missing_database_url_fails(environ, name, variable):
    environ.setenv('SECRET_KEY', KEY)
    with pytest.raises(ConfigError, match=f'{variable} is not set.*postgresql://'):
        create_app(name)


@pytest.mark.parametrize('name', [None, '', 'default', 'prod'])
def test_unset_or_unknown_configuration_fails(environ, name):
    """No default: a server started without FLASK_CONFIG must not run as development."""
    with pytest.raises(ConfigError, match='FLASK_CONFIG is .*development, testing, staging'):
        create_app(name)
