"""How the stages with the form meet the world: bad input, forged posts, load, outages, mistakes."""

import re
import secrets
import threading

import pytest

from tests.helpers.proxy import Proxy
from tests.helpers.reader import APP, FORM_STAGES, Reader, listed_names, stored_names
from tools.stages import setup_command

pytestmark = [pytest.mark.stages(*FORM_STAGES), pytest.mark.covers(*APP)]

MAX = 100  # the length of the name column


@pytest.fixture(scope='module')
def served(stage_dir, stage_bin, module_database, tmp_path_factory):
    """One running copy of the stage and its database, shared by the tests of this module."""
    reader = Reader(stage_dir, tmp_path_factory.mktemp('guards'), stage_bin)
    reader.develop_on(module_database)
    with reader.serve() as site:
        yield site, module_database


VALID = {
    'plain': ('Mark', 'Mark'),
    'outer blanks': ('  Joanna \t', 'Joanna'),
    'markup': ('<script>alert("hi")</script>', '<script>alert("hi")</script>'),
    'quotes': ('O\'Brien "the" `one`', 'O\'Brien "the" `one`'),
    'sql': ("Robert'); DROP TABLE names;--", "Robert'); DROP TABLE names;--"),
    'sql or': ('1 OR 1=1', '1 OR 1=1'),
    'unicode': ('Zoë Ångström 名前 🙂 مرحبا', 'Zoë Ångström 名前 🙂 مرحبا'),
    'control': ('bell\x07 and\u200b zero width', 'bell\x07 and\u200b zero width'),
    'inner newline': ('two\nlines', 'two\nlines'),
    'longest': ('x' * MAX, 'x' * MAX),
    'longest in emoji': ('🙂' * MAX, '🙂' * MAX),
}

INVALID = {
    'empty': ('', 'Please enter a name.'),
    'blank': (' \t\r\n ', 'Please enter a name.'),
    'too long': ('x' * (MAX + 1), f'Names are at most {MAX} characters.'),
    'far too long': ('y' * 100_000, f'Names are at most {MAX} characters.'),
    'nul': ('a\x00b', 'Names cannot contain the NUL character.'),
}


@pytest.mark.parametrize('typed, expected', VALID.values(), ids=VALID.keys())
def test_valid_name_is_stored_as_typed(served, stage, typed, expected):
    site, url = served
    response = site.submit(typed)
    assert response.status_code == 200
    assert stored_names(url)[-1] == expected
    if stage != '02':  # from stage 03 on, the page lists the names, escaped
        assert expected in listed_names(response.text)
    assert '<script>' not in response.text


@pytest.mark.parametrize('typed, message', INVALID.values(), ids=INVALID.keys())
def test_invalid_name_is_refused(served, typed, message):
    site, url = served
    before = stored_names(url)
    response = site.submit(typed)
    if response.status_code == 413:  # from stage 05 on, a body over 16 KB is refused whole
        assert len(typed.encode()) > 16 * 1024
    else:
        assert response.status_code == 200
        assert message in response.text
    assert stored_names(url) == before


def test_undecodable_bytes_get_a_page(served):
    site, url = served
    body = f'csrf_token={site.csrf_token()}&name=%FF%FEabc'
    headers = {'Content-Type': 'application/x-www-form-urlencoded'}
    response = site.post(data=body, headers=headers)
    assert response.status_code == 200
    assert stored_names(url)[-1] == '%FF%FEabc'  # Werkzeug keeps bytes that are not UTF-8 quoted


@pytest.mark.parametrize('token', [None, 'forged', 'another client'])
def test_post_without_a_valid_csrf_token_is_refused(served, token):
    site, url = served
    before = stored_names(url)
    data = {'name': 'Mallory'}
    if token == 'forged':
        data['csrf_token'] = 'IjEyMzQ1Ig.forged.token'
    elif token == 'another client':
        data['csrf_token'] = site.fresh().csrf_token()
    response = site.post(data=data)
    assert response.status_code == 400
    assert 'CSRF' in response.text
    assert stored_names(url) == before


def test_concurrent_submissions_are_all_stored(served):
    site, url = served
    before = len(stored_names(url))
    clients, per_client = 8, 5
    statuses = []

    def submit_all(number):
        client = site.fresh()
        for index in range(per_client):
            statuses.append(client.submit(f'reader {number}-{index}').status_code)

    threads = [threading.Thread(target=submit_all, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert statuses == [200] * (clients * per_client)
    names = stored_names(url)[before:]
    assert sorted(names) == sorted(
        f'reader {n}-{i}' for n in range(clients) for i in range(per_client)
    )


def test_database_outage_answers_503_then_recovers(reader, database):
    proxy = Proxy(database)
    proxy.start()
    reader.develop_on(proxy.url)
    with reader.serve() as site:
        assert site.submit('before').status_code == 200
        token = site.csrf_token()
        proxy.stop()
        try:
            pages = [site.post(data={'csrf_token': token, 'name': 'during'})]
            if reader.dir.name.startswith('03'):  # stage 03 reads the names for every page
                pages.append(site.get())
            for page in pages:
                assert page.status_code == 503
                assert 'The database cannot be reached right now.' in page.text
                assert 'Traceback' not in page.text
            assert 'Database unavailable' in site.log
        finally:
            proxy.start()
        assert site.submit('after').status_code == 200
        assert site.get().status_code == 200
    proxy.stop()
    assert stored_names(database) == ['before', 'after']


MISTAKES = {
    'unknown FLASK_CONFIG': ({'FLASK_CONFIG': 'prod'}, 'FLASK_CONFIG'),
    'no DEV_DATABASE_URL': ({'FLASK_CONFIG': 'development'}, 'DEV_DATABASE_URL'),
    'staging without SECRET_KEY': (
        {'FLASK_CONFIG': 'staging', 'STAGING_DATABASE_URL': 'postgresql://u:p@localhost/db'},
        'SECRET_KEY',
    ),
    'production without SECRET_KEY': (
        {'FLASK_CONFIG': 'production', 'PRODUCTION_DATABASE_URL': 'postgresql://u:p@localhost/d'},
        'SECRET_KEY',
    ),
    'production without its URL': (
        {'FLASK_CONFIG': 'production', 'SECRET_KEY': 'not-so-secret'},
        'PRODUCTION_DATABASE_URL',
    ),
}


def assert_one_clear_line(result, variable):
    assert result.returncode != 0
    output = (result.stdout + result.stderr).strip().splitlines()
    assert len(output) == 1, output
    assert output[0].startswith('Error: ')
    assert variable in output[0]


@pytest.mark.parametrize('env, variable', MISTAKES.values(), ids=MISTAKES.keys())
def test_configuration_mistake_ends_with_one_clear_line(reader, env, variable):
    result = reader.run(
        'flask run', env={'FLASK_APP': 'wsgi.py', **env}, check=False, preload=True
    )
    assert_one_clear_line(result, variable)


@pytest.mark.parametrize('command', ['flask shell', 'setup'])
def test_every_command_stops_on_a_mistake(reader, command):
    """flask shell, and the stage's setup: flask create-tables, or flask db upgrade."""
    command = setup_command(reader.dir) if command == 'setup' else command
    env, variable = MISTAKES['production without SECRET_KEY']
    result = reader.run(
        command, env={'FLASK_APP': 'wsgi.py', **env}, input='', check=False, preload=True
    )
    assert_one_clear_line(result, variable)


def test_unreachable_database_ends_with_one_clear_line(reader):
    url = f'postgresql://nobody@127.0.0.1:{Proxy("postgresql://x@127.0.0.1:1/x").port}/none'
    result = reader.run(
        setup_command(reader.dir),
        env={'FLASK_APP': 'wsgi.py', 'FLASK_CONFIG': 'development', 'DEV_DATABASE_URL': url},
        check=False,
        preload=True,
    )
    assert result.returncode != 0
    assert result.stderr.startswith('Error: cannot reach the database:')
    assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('name', ['staging', 'production'])
def test_debug_is_off_outside_development(reader, name, database):
    env = {
        'FLASK_APP': 'wsgi.py',
        'FLASK_CONFIG': name,
        'SECRET_KEY': secrets.token_hex(32),  # as long as stage 05 asks
        'TRUSTED_HOSTS': 'localhost',  # stage 05 also asks which host names it serves
        f'{name.upper()}_DATABASE_URL': database,
    }
    result = reader.run('flask shell', env=env, input='print("debug", app.debug)\n', preload=True)
    assert 'debug False' in result.stdout


def test_env_file_holds_the_settings_and_is_ignored(reader, database):
    example = (reader.dir / '.env.example').read_text()
    assert '.env' in (reader.dir / '.gitignore').read_text().split()
    settings = dict(
        line.split('=', 1) for line in example.splitlines() if line and not line.startswith('#')
    )
    config = (reader.dir / 'config.py').read_text()
    for variable in re.findall(r"'([A-Z]+_DATABASE_URL)'", config):
        if variable.startswith(('DEV', 'TEST')):
            assert '<password>' in settings[variable]  # a placeholder, never a real one
    assert '# SECRET_KEY=' in example
    # A reader copies the example to .env and fills it in; flask then needs no exports.
    filled = example.replace(settings['DEV_DATABASE_URL'], database)
    (reader.dir / '.env').write_text(filled)
    reader.run(setup_command(reader.dir), preload=True)  # the tables, as stored_names shows
    assert stored_names(database) == []
