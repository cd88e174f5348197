import re

import pytest

from app import db
from app.models import MAX_NAME_LENGTH, Name


def stored_names(app):
    with app.app_context():
        return db.session.scalars(db.select(Name.name).order_by(Name.id)).all()


def test_index_shows_the_form_and_the_names(app, client):
    with app.app_context():
        db.session.add(Name(name='Mark'))
        db.session.commit()
    page = client.get('/').get_data(as_text=True)
    assert 'Hello World!' in page
    assert 'Enter a name' in page
    assert '<li>Mark</li>' in page


def test_valid_name_is_stored_and_listed(app, client):
    response = client.post('/', data={'name': 'Joanna'})
    assert response.status_code == 302
    assert response.headers['Location'] == '/'
    assert stored_names(app) == ['Joanna']
    assert '<li>Joanna</li>' in client.get('/').get_data(as_text=True)


@pytest.mark.parametrize(
    'typed, stored',
    [
        ('  Foobar  ', 'Foobar'),
        ('Zoë Ångström 名前 🙂', 'Zoë Ångström 名前 🙂'),
        ("Robert'); DROP TABLE names;--", "Robert'); DROP TABLE names;--"),
        ('x' * MAX_NAME_LENGTH, 'x' * MAX_NAME_LENGTH),
    ],
)
def test_name_is_stored_as_typed(app, client, typed, stored):
    client.post('/', data={'name': typed})
    assert stored_names(app) == [stored]


def test_markup_is_shown_escaped(client):
    client.post('/', data={'name': '<b>bold</b>'})
    page = client.get('/').get_data(as_text=True)
    assert '<li>&lt;b&gt;bold&lt;/b&gt;</li>' in page
    assert '<b>bold</b>' not in page


@pytest.mark.parametrize(
    'typed, message',
    [
        ('', 'Please enter a name.'),
        ('   ', 'Please enter a name.'),
        ('x' * (MAX_NAME_LENGTH + 1), f'Names are at most {MAX_NAME_LENGTH} characters.'),
        ('a\x00b', 'Names cannot contain the NUL character.'),
    ],
)
def test_invalid_name_is_refused(app, client, typed, message):
    response = client.post('/', data={'name': typed})
    assert response.status_code == 200
    assert message in response.get_data(as_text=True)
    assert stored_names(app) == []


def test_post_without_csrf_token_is_refused(app):
    app.config['WTF_CSRF_ENABLED'] = True
    client = app.test_client()
    response = client.post('/', data={'name': 'Mallory'})
    assert response.status_code == 400
    assert stored_names(app) == []

    page = client.get('/').get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)[1]
    client.post('/', data={'name': 'Mark', 'csrf_token': token})
    assert stored_names(app) == ['Mark']
