"""Stages 02 on as a reader runs them: the README's walkthrough, step by step."""

import subprocess

import pytest

from tests.helpers.markdown import readme_blocks, readme_commands
from tests.helpers.reader import APP, NAMES, database_prefix, listed_names, stored_names
from tools import postgres

RUN_IT = 'Run it'  # the README's section that these tests follow
pytestmark = [
    pytest.mark.stages('02', '03', '04', '05', '06', '07', '08', '09', '10'),
    # What the walkthrough runs: a stage that carries these as they were runs it no more.
    pytest.mark.covers(*APP, f'README.md#{RUN_IT}'),
]


def session_lines(block):
    """Split an interactive session into what is typed and what is printed."""
    typed, printed = [], []
    for line in block.splitlines():
        if line.startswith(('>>> ', '... ')) or line in ('>>>', '...'):
            typed.append(line[4:])
        else:
            printed.append(line)
    return '\n'.join(typed) + '\n', printed


def test_psql_creates_the_databases(reader, server):
    """The README's psql lines, run with names of our own on the test server."""
    assert 'psql postgres' in readme_commands(reader.dir, RUN_IT)  # a database every server has
    (sql,) = readme_blocks(reader.dir, 'sql', RUN_IT)
    assert 'CREATE DATABASE app_deploy_development;' in sql
    assert 'CREATE DATABASE app_deploy_test;' in sql
    prefix = postgres.unique_name(database_prefix())
    sql = sql.replace('app_deploy_', f'{prefix}_')
    try:
        result = subprocess.run(
            [postgres.psql(), server], input=sql, capture_output=True, text=True, check=True
        )
        assert f'{prefix}_development' in result.stdout  # listed by \l
        assert f'{prefix}_test' in result.stdout
    finally:
        assert sorted(postgres.drop_databases(server, prefix)) == [
            f'{prefix}_development',
            f'{prefix}_test',
        ]


def test_walkthrough(reader, database):
    commands = readme_commands(reader.dir, RUN_IT)
    exports = [line for line in commands if line.startswith('export ')][:3]
    assert [line.split('=')[0] for line in exports] == [
        'export FLASK_APP',
        'export FLASK_CONFIG',
        'export DEV_DATABASE_URL',
    ]
    for line in exports:
        reader.export(line, DEV_DATABASE_URL=database)
    assert 'flask shell' in commands
    assert 'flask run' in commands
    *create_block, query_block = readme_blocks(reader.dir, 'python', RUN_IT)

    if create_block:  # stages 02 and 03: create the tables from flask shell
        typed, _ = session_lines(create_block[0])
        assert typed == 'from app import db\ndb.create_all()\nquit()\n'
        reader.run('flask shell', input=typed)
    else:  # stage 04 on: migrations make them
        assert commands[commands.index('flask run') - 1] == 'flask db upgrade'
        reader.run('flask db upgrade')
    assert postgres.execute(database, 'SELECT count(*) FROM names') == [(0,)]

    with reader.serve('flask run') as site:
        for name in NAMES:
            response = site.submit(name)
            assert response.status_code == 200
            assert response.history[0].status_code == 302  # post/redirect/get
        page = site.get().text
    assert 'Hello World!' in page
    if reader.dir.name.startswith('03'):
        assert listed_names(page) == NAMES
    elif not reader.dir.name.startswith('02'):
        assert listed_names(page) == NAMES[::-1]  # newest first

    typed, printed = session_lines(query_block)
    output = reader.run('flask shell', input=typed).stdout
    for line in printed:
        assert line.strip() in output
    assert stored_names(database) == NAMES


@pytest.mark.stages('02', '03')
def test_create_tables_command(reader, database):
    assert 'Created the tables: names.' in reader.develop_on(database).stdout
    assert 'nothing was created' in reader.develop_on(database).stdout
    assert postgres.execute(database, 'SELECT count(*) FROM names') == [(0,)]
