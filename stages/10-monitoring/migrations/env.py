"""How Alembic reaches the app's database; ``flask db`` runs this for every command."""

import logging
from logging.config import fileConfig

import click
from alembic import context
from flask import current_app
from sqlalchemy.exc import DBAPIError, OperationalError

config = context.config
# Log as alembic.ini says, leaving the loggers of the app (and of pytest) working.
fileConfig(config.config_file_name, disable_existing_loggers=False)
logger = logging.getLogger('alembic.env')

migrate = current_app.extensions['migrate']
engine = migrate.db.engine
target_metadata = migrate.db.metadata  # what autogenerate compares the database with


def run_migrations_offline():
    """Print the SQL instead of running it: ``flask db upgrade --sql``."""
    url = engine.url.render_as_string(hide_password=False)
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def skip_empty_autogenerate(context, revision, directives):
    """Write no revision when ``flask db migrate`` finds no change."""
    if getattr(config.cmd_opts, 'autogenerate', False) and directives[0].upgrade_ops.is_empty():
        directives[:] = []
        logger.info('No changes in schema detected.')


def run_migrations_online():
    """Run the migrations on the database, all in one transaction."""
    applied = []  # the steps that ran: none when the database is there already
    options = {
        'process_revision_directives': skip_empty_autogenerate,
        'on_version_apply': lambda **step: applied.append(step),
        **migrate.configure_args,
    }
    try:
        connection = engine.connect()
    except OperationalError as error:
        raise click.ClickException(f'cannot reach the database: {error.orig}'.strip()) from None
    with connection:
        context.configure(connection=connection, target_metadata=target_metadata, **options)
        try:
            with context.begin_transaction():
                # A migration may rewrite a big table: lift the app's statement_timeout
                # for this transaction. lock_timeout stays: a migration that cannot get
                # its lock fails within seconds instead of holding up every request behind it.
                connection.exec_driver_sql('SET LOCAL statement_timeout = 0')
                context.run_migrations()
        except DBAPIError as error:  # PostgreSQL rolled the whole transaction back
            message = error.orig.diag.message_primary or error.orig
            raise click.ClickException(
                f'the migration failed; nothing was changed: {message}'
            ) from None
    if 'destination_rev' in context.get_context().opts and not applied:  # upgrade, downgrade
        logger.info('The database is at that revision already; nothing to do.')


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
