from flask import Flask, current_app, render_template
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import MetaData, exc
from werkzeug.exceptions import HTTPException

from app import metrics
from config import ConfigError, config

# Name constraints predictably, so that a later migration can name what it drops.
# Primary keys keep PostgreSQL's own names (names_pkey), as stage 03 made them.
NAMING_CONVENTION = {
    'ix': 'ix_%(column_0_label)s',
    'uq': 'uq_%(table_name)s_%(column_0_name)s',
    'ck': 'ck_%(table_name)s_%(constraint_name)s',
    'fk': 'fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s',
}
# How long a client should wait before trying again after a 503.
RETRY_AFTER_SECONDS = 30

db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING_CONVENTION))
migrate = Migrate()
csrf = CSRFProtect()


def create_app(config_name):
    """Build an app with the settings of ``config_name``, a key of ``config``."""
    if config_name not in config:
        given = f'{config_name!r}, not a configuration' if config_name else 'not set'
        raise ConfigError(f'FLASK_CONFIG is {given}; set it to one of: {", ".join(config)}')
    app = Flask(__name__)
    app.config.from_object(config[config_name])
    config[config_name].init_app(app)

    # First, so that its timer starts before any other hook may answer (a refused
    # CSRF token, say): every request is counted, however it ends.
    metrics.init_app(app)
    db.init_app(app)
    # PostgreSQL alters tables in place: no SQLite-style batch mode. Compare server
    # defaults too, so that changing one yields a migration.
    migrate.init_app(app, db, render_as_batch=False, compare_server_default=True)
    csrf.init_app(app)

    from app import health, names

    app.register_blueprint(names.bp)
    app.register_blueprint(health.bp)
    # The database is down, or a wait for it timed out: for a connection from the
    # pool (TimeoutError), a new connection, a lock or a statement (OperationalError).
    app.register_error_handler(exc.OperationalError, database_unavailable)
    app.register_error_handler(exc.TimeoutError, database_unavailable)
    app.register_error_handler(HTTPException, http_error)
    metrics.count_errors_from_zero(app)
    return app


def database_unavailable(error):
    """Answer 503 while the database cannot be reached, and log why."""
    reason = str(getattr(error, 'orig', error)).strip().splitlines()[0]  # no SQL
    current_app.logger.error('Database unavailable: %s', reason)
    headers = {'Retry-After': RETRY_AFTER_SECONDS}
    return render_template('unavailable.html'), 503, headers


def http_error(error):
    """Answer 404, 405, 413 and the other HTTP errors with the site's own page.

    An unexpected exception arrives here as a 500, after Flask has logged it: the page
    names the error, never the traceback.
    """
    response = error.get_response()  # keeps the status and headers such as Allow
    response.data = render_template('error.html', error=error)
    return response
