from flask import Flask, current_app, render_template
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.exc import OperationalError

from config import ConfigError, config

db = SQLAlchemy()
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
    csrf.init_app(app)

    from app import names

    app.register_blueprint(names.bp)
    app.register_error_handler(OperationalError, database_unavailable)
    return app


def database_unavailable(error):
    """Answer 503 while the database cannot be reached, and log why."""
    current_app.logger.error('Database unavailable: %s', error.orig)
    return render_template('unavailable.html'), 503
