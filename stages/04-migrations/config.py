"""Settings for each environment the app runs in.

Secrets and database URLs come from environment variables, never from this file.
"""

import os


class ConfigError(Exception):
    """A setting the app needs is missing or wrong."""


def database_url(variable):
    """Return the database URL stored in the environment variable ``variable``."""
    url = os.environ.get(variable)
    if not url:
        raise ConfigError(
            f'{variable} is not set; export it as '
            'postgresql://<user>:<password>@localhost:5432/<database>'
        )
    # Hosting providers hand out postgres:// URLs, and SQLAlchemy 2.1 reads a bare
    # postgresql:// as psycopg 3: name the driver we install, psycopg2.
    scheme, _, rest = url.partition('://')
    if scheme in ('postgres', 'postgresql'):
        url = f'postgresql+psycopg2://{rest}'
    return url


class Config:
    """Settings shared by every environment."""

    DATABASE_URL_VARIABLE = None  # each environment names its own
    SECRET_KEY_FALLBACK = None  # only development and testing have one
    # Test each pooled connection before use, so the app recovers when the
    # database comes back after an outage.
    SQLALCHEMY_ENGINE_OPTIONS = {'pool_pre_ping': True}

    @classmethod
    def init_app(cls, app):
        """Read the secrets from the environment, failing on a missing one."""
        app.config['SECRET_KEY'] = os.environ.get('SECRET_KEY') or cls.SECRET_KEY_FALLBACK
        if not app.config['SECRET_KEY']:
            raise ConfigError('SECRET_KEY is not set; export it as a long random string')
        app.config['SQLALCHEMY_DATABASE_URI'] = database_url(cls.DATABASE_URL_VARIABLE)


class DevelopmentConfig(Config):
    DATABASE_URL_VARIABLE = 'DEV_DATABASE_URL'
    SECRET_KEY_FALLBACK = 'dev'


class TestingConfig(Config):
    TESTING = True
    WTF_CSRF_ENABLED = False
    DATABASE_URL_VARIABLE = 'TEST_DATABASE_URL'
    SECRET_KEY_FALLBACK = 'test'


class StagingConfig(Config):
    DATABASE_URL_VARIABLE = 'STAGING_DATABASE_URL'


class ProductionConfig(Config):
    DATABASE_URL_VARIABLE = 'PRODUCTION_DATABASE_URL'


config = {
    'development': DevelopmentConfig,
    'testing': TestingConfig,
    'staging': StagingConfig,
    'production': ProductionConfig,
    'default': DevelopmentConfig,
}
