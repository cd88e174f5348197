import os

import pytest

from app import create_app, db


def pytest_sessionstart(session):
    """Stop before the first test if the test database is missing or in use."""
    if not os.environ.get('TEST_DATABASE_URL'):
        pytest.exit(
            'TEST_DATABASE_URL is not set; export it as '
            'postgresql://<user>:<password>@localhost:5432/app_deploy_test',
            returncode=1,
        )
    with create_app('testing').app_context():
        tables = db.inspect(db.engine).get_table_names()
    if tables:
        pytest.exit(
            f'the database in TEST_DATABASE_URL already has tables ({", ".join(tables)}) '
            'and the tests drop what they create; point it at an empty database',
            returncode=1,
        )


@pytest.fixture
def app():
    app = create_app('testing')
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.drop_all()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()
