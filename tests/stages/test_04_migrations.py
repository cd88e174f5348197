"""Stage 04's migrations as a reader meets them: adopting a stage 03 database, a model
changed without a migration, a migration PostgreSQL refuses."""

import os
import shlex
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.helpers.markdown import readme_blocks
from tests.helpers.reader import NAMES, Reader, database_prefix, new_database, stored_names
from tools import postgres
from tools.stages import STAGES

pytestmark = pytest.mark.stages('04')

FIRST = '2bb91fbfa392'  # the revision that creates the names table as stage 03 made it


def names_table(url):
    """What PostgreSQL says of the names table: columns, constraints and indexes."""
    queries = [
        'SELECT column_name, data_type, character_maximum_length, is_nullable, column_default'
        " FROM information_schema.columns WHERE table_name = 'names' ORDER BY ordinal_position",
        'SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint'
        " WHERE conrelid = 'names'::regclass ORDER BY conname",
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'names' ORDER BY indexname",
    ]
    return [postgres.execute(url, query) for query in queries]


@pytest.fixture
def stage_03_database(stage_bin, database, tmp_path):
    """A database made by stage 03 itself: its `flask create-tables`, names typed in its form."""
    old = Reader(STAGES['03'], tmp_path / 'stage-03', stage_bin)
    old.develop_on(database)
    with old.serve() as site:
        for name in NAMES:
            assert site.submit(name).status_code == 200
    return database


def test_first_revision_makes_the_table_stage_03_made(reader, stage_03_database, server):
    with new_database(server) as migrated:
        reader.develop_on(migrated)  # to the newest revision; then back to the first
        reader.run('flask db downgrade 2bb91fbfa392')
        assert names_table(migrated) == names_table(stage_03_database)


def test_stage_03_database_is_adopted_as_the_readme_says(reader, stage_03_database):
    (block,) = [body for body in readme_blocks(reader.dir, 'console') if 'db stamp' in body]
    lines = block.splitlines()
    assert lines == [
        'pg_dump --file=before-migrations.sql "$DEV_DATABASE_URL"',
        f'flask db stamp {FIRST}',
        'flask db upgrade',
        'flask db check',
    ]
    reader.env.update(FLASK_APP='wsgi.py', DEV_DATABASE_URL=stage_03_database)
    reader.env['PATH'] = f'{postgres.psql().parent}{os.pathsep}{reader.env["PATH"]}'
    outputs = [reader.run(f'bash -c {shlex.quote(line)}') for line in lines]

    assert 'Foobar' in (reader.dir / 'before-migrations.sql').read_text()
    assert 'No new upgrade operations detected.' in outputs[-1].stdout
    assert stored_names(stage_03_database) == NAMES
    filled = 'SELECT count(*) FROM names WHERE created_at IS NOT NULL'
    assert postgres.execute(stage_03_database, filled) == [(len(NAMES),)]


def test_model_changed_without_a_migration_fails_the_check(reader, database):
    reader.develop_on(database)
    assert reader.run('flask db check').returncode == 0
    models = reader.dir / 'app' / 'models.py'
    models.write_text(
        models.read_text().replace(
            '    def __repr__',
            '    nickname: Mapped[str | None] = mapped_column(String(50))\n\n    def __repr__',
        )
    )
    result = reader.run('flask db check', check=False)
    assert result.returncode == 1
    assert 'New upgrade operations detected' in result.stderr
    assert "'add_column'" in result.stderr


@pytest.fixture
def role_without_create(server, database):
    """A login role that may connect to ``database`` but not create tables in it."""
    role = postgres.unique_name(database_prefix())
    postgres.create_role(server, role)
    try:
        parts = urlsplit(database)
        host = parts.netloc.rpartition('@')[2]
        yield urlunsplit(parts._replace(netloc=f'{role}@{host}'))
    finally:
        postgres.drop_role(server, role)


def test_refused_migration_says_why_in_one_line_and_changes_nothing(reader, role_without_create):
    result = reader.run(
        'flask db upgrade',
        env={'FLASK_APP': 'wsgi.py', 'DEV_DATABASE_URL': role_without_create},
        check=False,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if not line.startswith('INFO')]
    assert errors == [
        'Error: the migration failed; nothing was changed: permission denied for schema public'
    ]
    assert postgres.execute(role_without_create, "SELECT to_regclass('alembic_version')") == [
        (None,)
    ]
