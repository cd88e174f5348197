import pytest

from app import create_app
from config import ConfigError

URL = 'postgresql://user:secret@localhost:5432/app_deploy'


@pytest.fixture
def environ(monkeypatch):
    """Start each configuration test from an environment with none of our variables."""
    for variable in (
        'SECRET_KEY',
        'DEV_DATABASE_URL',
        'TEST_DATABASE_URL',
        'STAGING_DATABASE_URL',
        'PRODUCTION_DATABASE_URL',
    ):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def test_development(environ):
    environ.setenv('DEV_DATABASE_URL', URL)
    app = create_app('development')
    assert app.config['SQLALCHEMY_DATABASE_URI'].endswith('@localhost:5432/app_deploy')
    assert app.config['SECRET_KEY']
    assert not app.testing
    assert not app.debug


def test_default_is_development(environ):
    environ.setenv('DEV_DATABASE_URL', URL)
    assert create_app().config['SQLALCHEMY_DATABASE_URI'].endswith('/app_deploy')


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


@pytest.mark.parametrize('name', ['staging', 'production'])
def test_secret_settings_come_from_the_environment(environ, name):
    environ.setenv('SECRET_KEY', 'from-the-environment')
    environ.setenv(f'{name.upper()}_DATABASE_URL', URL)
    app = create_app(name)
    assert app.config['SECRET_KEY'] == 'from-the-environment'
    assert not app.debug


@pytest.mark.parametrize('name', ['staging', 'production'])
def test_missing_secret_key_fails(environ, name):
    environ.setenv(f'{name.upper()}_DATABASE_URL', URL)
    with pytest.raises(ConfigError, match='SECRET_KEY'):
        create_app(name)


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
    environ.setenv('SECRET_KEY', 'from-the-environment')
    with pytest.raises(ConfigError, match=f'{variable} is not set.*postgresql://'):
        create_app(name)


def test_unknown_configuration_fails(environ):
    with pytest.raises(ConfigError, match='development, testing, staging, production'):
        create_app('nope')
