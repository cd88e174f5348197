"""Stage 01 as a reader runs it."""

import pytest

from tests.reader import readme_commands

pytestmark = pytest.mark.stages('01')


def test_flask_run(reader):
    commands = readme_commands(reader.dir)
    assert 'export FLASK_APP=app.py' in commands
    assert 'flask run' in commands
    reader.export('export FLASK_APP=app.py')
    with reader.serve('flask run') as site:
        response = site.get()
    assert response.status_code == 200
    assert response.text == 'Hello World!'


def test_python_app_py(reader):
    """``python app.py`` serves on Flask's default port, 5000, as the README says."""
    assert 'python app.py' in readme_commands(reader.dir)
    with reader.serve('python app.py', port=5000) as site:
        assert site.get().text == 'Hello World!'
