import shutil
from datetime import datetime

import pytest
from flask_migrate import cli as migrate_cli
from flask_migrate import downgrade, stamp, upgrade

from app import db

FIRST = '2bb91fbfa392'  # creates the names table as stage 03 made it
SECOND = '948a6eac32b5'  # adds names.created_at
# What db.create_all() ran in stage 03, as SQLAlchemy wrote it for PostgreSQL.
STAGE_03_TABLE = (
    'CREATE TABLE names (id SERIAL NOT NULL, name VARCHAR(100) NOT NULL, PRIMARY KEY (id))'
)
# A third revision whose second step fails.
BROKEN_REVISION = f"""
from alembic import op

revision = 'broken'
down_revision = {SECOND!r}


def upgrade():
    op.execute('ALTER TABLE names ADD COLUMN nickname text')
    op.execute('SELECT 1 / 0')
"""

# A third revision that fails if the app's statement_timeout still applies.
UNLIMITED_REVISION = f"""
from alembic import op

revision = 'unlimited'
down_revision = {SECOND!r}


def upgrade():
    op.execute(
        "DO $$ BEGIN IF current_setting('statement_timeout') <> '0' THEN "
        "RAISE 'limited'; END IF; END $$"
    )


def downgrade():
    pass
"""


def tables():
    return sorted(db.inspect(db.engine).get_table_names())


def columns(table='names'):
    return {column['name']: column for column in db.inspect(db.engine).get_columns(table)}


def sql(statement):
    """Run SQL in a transaction of its own, which holds no lock a migration waits for."""
    with db.engine.begin() as connection:
        result = connection.execute(db.text(statement))
        return result.all() if result.returns_rows else None


def revision():
    return sql('SELECT version_num FROM alembic_version')[0][0]


def test_upgrade_builds_the_schema_from_an_empty_database(app):
    with app.app_context():
        downgrade(revision='base')
        assert tables() == ['alembic_version']
        upgrade()
        assert tables() == ['alembic_version', 'names']
        assert revision() == SECOND
        created_at = columns()['created_at']
        assert str(created_at['type']) == 'TIMESTAMP'
        assert created_at['type'].timezone
        assert not created_at['nullable']


def test_upgrade_at_the_newest_revision_does_nothing_and_says_so(app, runner):
    result = runner.invoke(migrate_cli.db, ['upgrade'])
    assert result.exit_code == 0
    assert 'nothing to do' in result.output
    with app.app_context():
        assert revision() == SECOND


def test_models_match_the_migrations(runner):
    """`flask db check` fails when a model changed and no migration says how."""
    result = runner.invoke(migrate_cli.db, ['check'])
    assert result.exit_code == 0, result.output


def test_downgrade_keeps_every_name(app):
    with app.app_context():
        sql("INSERT INTO names (name) VALUES ('Mark'), ('Joanna')")
        downgrade(revision=FIRST)
        assert 'created_at' not in columns()
        assert sql('SELECT name FROM names ORDER BY id') == [('Mark',), ('Joanna',)]
        upgrade()
        assert sql('SELECT count(*) FROM names WHERE created_at IS NOT NULL') == [(2,)]


def test_a_stage_03_database_is_adopted_with_every_name(app, runner):
    with app.app_context():
        downgrade(revision='base')
        sql('DROP TABLE alembic_version')
        sql(STAGE_03_TABLE)
        sql("INSERT INTO names (name) VALUES ('Foobar'), ('Mark')")
        before = datetime.now().astimezone()

        stamp(revision=FIRST)  # "this database is at revision 1 already"
        upgrade()

        rows = sql('SELECT id, name, created_at FROM names ORDER BY id')
        assert [(id, name) for id, name, _ in rows] == [(1, 'Foobar'), (2, 'Mark')]
        assert all(created_at >= before.replace(microsecond=0) for *_, created_at in rows)
    assert runner.invoke(migrate_cli.db, ['check']).exit_code == 0


def test_a_failed_migration_leaves_the_database_as_it_was(app, tmp_path):
    """PostgreSQL runs DDL in the transaction: a failure undoes every step of the upgrade."""
    directory = tmp_path / 'migrations'
    shutil.copytree(app.extensions['migrate'].directory, directory)
    (directory / 'versions' / 'broken.py').write_text(BROKEN_REVISION)
    with app.app_context():
        downgrade(revision='base')
        with pytest.raises(Exception, match='nothing was changed: division by zero'):
            upgrade(directory=str(directory))
        assert tables() == ['alembic_version']  # no names table: revisions 1 and 2 undone
        assert sql('SELECT version_num FROM alembic_version') == []


def test_migrations_run_without_the_statement_timeout(app, tmp_path):
    """A migration may take longer than a request: env.py lifts statement_timeout."""
    directory = tmp_path / 'migrations'
    shutil.copytree(app.extensions['migrate'].directory, directory)
    (directory / 'versions' / 'unlimited.py').write_text(UNLIMITED_REVISION)
    with app.app_context():
        upgrade(directory=str(directory))
        assert revision() == 'unlimited'
        downgrade(directory=str(directory), revision=SECOND)
