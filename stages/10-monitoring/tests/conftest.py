import os
import secrets

import pytest
from flask.cli import load_dotenv
from flask_migrate import downgrade, upgrade
from sqlalchemy.exc import OperationalError

from app import create_app, db


def pytest_sessionstart(session):
    """Stop before the first test if the test database is missing or in use."""
    load_dotenv()  # read .env as `flask` does, so TEST_DATABASE_URL may live there
    if not os.environ.get('TEST_DATABASE_URL'):
        raise pytest.UsageError(
            'TEST_DATABASE_URL is not set; export it (or put it in .env) as '
            'postgresql://<user>:<password>@localhost:5432/app_deploy_test'
        )
    try:
        with create_app('testing').app_context():
            tables = db.inspect(db.engine).get_table_names()
    except OperationalError as error:
        raise pytest.UsageError(f'cannot reach TEST_DATABASE_URL: {error.orig}'.strip()) from None
    if tables:
        raise pytest.UsageError(
            f'the database in TEST_DATABASE_URL already has tables ({", ".join(tables)}) '
            'and the tests drop what they create; point it at an empty database'
        )


@pytest.fixture
def app():
    """The app, its database migrated to the newest revision, emptied when the test ends."""
    app = create_app('testing')
    with app.app_context():
        upgrade()
    yield app
    with app.app_context():
        downgrade(revision='base')
        db.session.execute(db.text('DROP TABLE IF EXISTS alembic_version'))  # base keeps it
        db.session.commit()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def production_app(app, monkeypatch):
    """The app with production's settings, on the test database that ``app`` migrated."""
    monkeypatch.setenv('PRODUCTION_DATABASE_URL', app.config['SQLALCHEMY_DATABASE_URI'])
    monkeypatch.setenv('SECRET_KEY', secrets.token_hex(32))
    monkeypatch.setenv('TRUSTED_HOSTS', 'example.com')
    monkeypatch.delenv('FLASK_DEBUG', raising=False)
    return create_app('production')
