from flask import Flask, current_app, render_template
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import MetaData
from sqlalchemy.exc import OperationalError

from config import ConfigError, config

# Name constraints predictably, so that a later migration can name what it drops.
# Primary keys keep PostgreSQL's own names (names_pkey), as stage 03 made them.
NAMING_CONVENTION = {
    'ix': 'ix_%(column_0_label)s',
    'uq': 'uq_%(table_name)s_%(column_0_name)s',
    'ck': 'ck_%(table_name)s_%(constraint_name)s',
    'fk': 'fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s',
}

db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING_CONVENTION))
migrate = Migrate()
csrf = CSRFProtect()


def create_app(config_name='default'):
    """Build an app with the settings of ``config_name``, a key of ``config``."""
    if config_name not in config:
        raise ConfigError(
            f'unknown configuration {config_name!r}; '
            f'set FLASK_CONFIG to one of: {", ".join(config)}'
        )
    app = Flask(__name__)
    app.config.from_object(config[config_name])
    config[config_name].init_app(app)

    db.init_app(app)
    # PostgreSQL alters tables in place: no SQLite-style batch mode. Compare server
    # defaults too, so that changing one yields a migration.
    migrate.init_app(app, db, render_as_batch=False, compare_server_default=True)
    csrf.init_app(app)

    from app import names

    app.register_blueprint(names.bp)
    app.register_error_handler(OperationalError, database_unavailable)
    return app


def database_unavailable(error):
    """Answer 503 while the database cannot be reached, and log why."""
    current_app.logger.error('Database unavailable: %s', error.orig)
    return render_template('unavailable.html'), 503
