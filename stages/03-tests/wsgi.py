"""The app as `flask` and WSGI servers load it, set up by FLASK_CONFIG."""

import os
import sys

import click
from sqlalchemy.exc import OperationalError, ProgrammingError

from app import create_app, db
from app.models import Name
from config import ConfigError

try:
    app = create_app(os.environ.get('FLASK_CONFIG') or 'default')
except ConfigError as error:
    sys.exit(f'Error: {error}')


@app.shell_context_processor
def make_shell_context():
    return {'db': db, 'Name': Name}


@app.cli.command('create-tables')
def create_tables():
    """Create the database tables that do not exist yet."""
    try:
        existing = set(db.inspect(db.engine).get_table_names())
        db.create_all()
    except OperationalError as error:
        raise click.ClickException(f'cannot reach the database: {error.orig}'.strip()) from None
    except ProgrammingError as error:  # for example, no right to create tables
        message = error.orig.diag.message_primary  # PostgreSQL's message, without the SQL
        raise click.ClickException(f'cannot create the tables: {message}') from None
    created = sorted(set(db.metadata.tables) - existing)
    if created:
        click.echo(f'Created the tables: {", ".join(created)}.')
    else:
        click.echo('Every table exists already; nothing was created.')
