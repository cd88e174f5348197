"""Settings for each environment the app runs in.

Secrets and database URLs come from environment variables, never from this file: each
as NAME, or as NAME_FILE, the path of a file that holds it (compose's secrets).
"""

import logging
import os
import secrets

from flask.helpers import get_debug_flag
from werkzeug.middleware.proxy_fix import ProxyFix

MIN_SECRET_KEY_BYTES = 32


class ConfigError(Exception):
    """A setting the app needs is missing or wrong."""


def setting(name):
    """The value of the environment variable ``name``, or of the file ``name``_FILE names."""
    path = os.environ.get(f'{name}_FILE')
    if path:
        try:
            with open(path) as file:
                return file.read().strip()
        except OSError as error:
            raise ConfigError(f'{name}_FILE names a file that cannot be read: {error}') from None
    return os.environ.get(name)


def database_url(variable):
    """Return the database URL stored in the environment variable ``variable``."""
    url = setting(variable)
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


class JournalFormatter(logging.Formatter):
    """Log lines as systemd's journal reads them: a ``<3>``-style priority, no time.

    The journal stamps each line itself, and ``journalctl -p err`` filters on the
    priority; every line of a traceback gets it too, each being an entry of its own.
    """

    PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6}

    def format(self, record):
        priority = f'<{self.PRIORITIES.get(record.levelno, 7)}>'
        return priority + super().format(record).replace('\n', '\n' + priority)


class Config:
    """Settings shared by every environment."""

    DATABASE_URL_VARIABLE = None  # each environment names its own
    SECRET_KEY_FALLBACK = None  # only development and testing have one
    # The form's body is under 1 KB: refuse anything over 16 KB with 413.
    MAX_CONTENT_LENGTH = 16 * 1024
    NAMES_PER_PAGE = 50
    # Bound every wait for the database, well within gunicorn's 30 s worker timeout:
    # for a pooled connection, for a new one, for a lock, for a statement. Each
    # ends in the 503 page. pool_pre_ping tests a pooled connection before use, so
    # the app recovers when the database comes back after an outage.
    SQLALCHEMY_ENGINE_OPTIONS = {
        'pool_pre_ping': True,
        'pool_timeout': 5,
        'connect_args': {
            'connect_timeout': 5,
            'options': '-c statement_timeout=10s -c lock_timeout=3s',
        },
    }

    @classmethod
    def init_app(cls, app):
        """Read the secrets from the environment, failing on a missing one."""
        app.config['SECRET_KEY'] = setting('SECRET_KEY') or cls.SECRET_KEY_FALLBACK
        if not app.config['SECRET_KEY']:
            raise ConfigError('SECRET_KEY is not set; export it as a long random string')
        app.config['SQLALCHEMY_DATABASE_URI'] = database_url(cls.DATABASE_URL_VARIABLE)


class DevelopmentConfig(Config):
    DATABASE_URL_VARIABLE = 'DEV_DATABASE_URL'
    # A new random key each time the app starts: no key in the repository that a
    # forgotten setting could put in production. Sessions end on a restart.
    SECRET_KEY_FALLBACK = secrets.token_hex(32)


class TestingConfig(Config):
    TESTING = True
    WTF_CSRF_ENABLED = False
    DATABASE_URL_VARIABLE = 'TEST_DATABASE_URL'
    SECRET_KEY_FALLBACK = 'test'


class ProductionConfig(Config):
    DATABASE_URL_VARIABLE = 'PRODUCTION_DATABASE_URL'
    DEBUG = False
    # The session cookie (which holds the CSRF token) only over HTTPS, out of
    # reach of scripts, and not sent along with posts from other sites.
    SESSION_COOKIE_SECURE = True
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = 'Lax'

    @classmethod
    def init_app(cls, app):
        super().init_app(app)
        if len(app.config['SECRET_KEY'].encode()) < MIN_SECRET_KEY_BYTES:
            raise ConfigError(
                f'SECRET_KEY is too short; use at least {MIN_SECRET_KEY_BYTES} random bytes: '
                'python3 -c "import secrets; print(secrets.token_hex(32))"'
            )
        hosts = [host.strip() for host in os.environ.get('TRUSTED_HOSTS', '').split(',')]
        app.config['TRUSTED_HOSTS'] = [host for host in hosts if host]
        if not app.config['TRUSTED_HOSTS']:
            raise ConfigError(
                'TRUSTED_HOSTS is not set; export it as the host names of the site, '
                'comma-separated: example.com,www.example.com'
            )
        if get_debug_flag():
            raise ConfigError('FLASK_DEBUG is on; no debugger in staging or production')

        # nginx is the one proxy in front of the app: trust the last value of the three
        # X-Forwarded-* headers it sets (deploy/nginx.conf), and no other header. With
        # nothing in front (compose.yaml sets TRUSTED_PROXIES=0), trust none of them.
        proxies = os.environ.get('TRUSTED_PROXIES', '1')
        if proxies not in ('0', '1'):
            raise ConfigError('TRUSTED_PROXIES is 1 (nginx in front, the default) or 0 (none)')
        if proxies == '1':
            app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)

        # Log to stderr, which systemd sends to the journal, in its style.
        handler = logging.StreamHandler()
        handler.setFormatter(JournalFormatter('%(name)s: %(message)s'))
        app.logger.handlers = [handler]  # in place of Flask's default handler
        app.logger.propagate = False  # each line once, not again by the root logger
        app.logger.setLevel(logging.INFO)


class StagingConfig(ProductionConfig):
    """Production's settings, with a database of its own."""

    DATABASE_URL_VARIABLE = 'STAGING_DATABASE_URL'


config = {
    'development': DevelopmentConfig,
    'testing': TestingConfig,
    'staging': StagingConfig,
    'production': ProductionConfig,
}
