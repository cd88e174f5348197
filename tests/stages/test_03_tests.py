"""The stage's own test suite (stage 03 on), run as its README says, in a copy of the stage."""

import pytest

from tests.helpers.markdown import readme_commands
from tests.helpers.reader import APP, tables
from tools import postgres

RUN_THE_TESTS = 'Run the tests'  # the README's section that these tests follow
pytestmark = [
    pytest.mark.stages('03', '04', '05', '06', '07', '08', '09', '10'),
    # What the suite runs on: a stage that carries these as they were runs it no more.
    pytest.mark.covers(*APP, 'tests', 'requirements-dev.txt', f'README.md#{RUN_THE_TESTS}'),
]


def test_own_suite_passes_and_leaves_the_database_empty(reader, database):
    commands = readme_commands(reader.dir, RUN_THE_TESTS)
    export = next(line for line in commands if line.startswith('export TEST_DATABASE_URL='))
    assert commands[commands.index(export) + 1] == 'pytest'
    reader.export(export, TEST_DATABASE_URL=database)
    result = reader.run('pytest -p no:cacheprovider', check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ' passed' in result.stdout.splitlines()[-1]
    assert ' skipped' not in result.stdout.splitlines()[-1]
    assert tables(database) == []


def test_own_suite_stops_at_once_without_a_test_database(reader):
    result = reader.run('pytest -p no:cacheprovider', check=False)
    assert result.returncode == 4  # pytest's "usage error"
    output = (result.stdout + result.stderr).strip().splitlines()
    assert len(output) == 1, output
    assert 'TEST_DATABASE_URL is not set' in output[0]


def test_own_suite_reads_the_test_database_from_env_file(reader, database):
    """The README says .env may hold TEST_DATABASE_URL: pytest reads it as flask does."""
    assert 'TEST_DATABASE_URL=' in (reader.dir / '.env.example').read_text()
    (reader.dir / '.env').write_text(f'TEST_DATABASE_URL={database}\n')
    result = reader.run('pytest -p no:cacheprovider -q -k test_name_is_stored', check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ' passed' in result.stdout.splitlines()[-1]


def test_own_suite_refuses_a_database_that_has_tables(reader, database):
    postgres.execute(database, 'CREATE TABLE keep_me (id integer)')
    reader.env['TEST_DATABASE_URL'] = database
    result = reader.run('pytest -p no:cacheprovider', check=False)
    assert result.returncode == 4
    assert 'already has tables (keep_me)' in result.stdout + result.stderr
    assert tables(database) == ['keep_me']
