import re
from datetime import UTC, datetime

import pytest

from app import db
from app.models import MAX_NAME_LENGTH, Name


def stored_names(app):
    with app.app_context():
        return db.session.scalars(db.select(Name.name).order_by(Name.id)).all()


def listed_names(page):
    return re.findall(r'<li>(.*?), added <time', page)


def test_index_shows_the_form_and_the_names(app, client):
    with app.app_context():
        db.session.add(Name(name='Mark'))
        db.session.commit()
    page = client.get('/').get_data(as_text=True)
    assert 'Hello World!' in page
    assert 'Enter a name' in page
    assert listed_names(page) == ['Mark']


def test_names_are_listed_newest_first_with_their_date(app, client):
    with app.app_context():
        db.session.add(Name(name='Foobar', created_at=datetime(2025, 1, 2, 9, 30, tzinfo=UTC)))
        db.session.add(Name(name='Mark', created_at=datetime(2026, 3, 4, 17, 45, tzinfo=UTC)))
        db.session.add(Name(name='Joanna'))  # now, as the database sets it
        db.session.commit()
    page = client.get('/').get_data(as_text=True)
    assert listed_names(page) == ['Joanna', 'Mark', 'Foobar']
    assert '<time datetime="2025-01-02T09:30:00+00:00">' in page


def test_valid_name_is_stored_and_listed(app, client):
    response = client.post('/', data={'name': 'Joanna'})
    assert response.status_code == 302
    assert response.headers['Location'] == '/'
    assert stored_names(app) == ['Joanna']
    assert listed_names(client.get('/').get_data(as_text=True)) == ['Joanna']


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
    assert listed_names(page) == ['&lt;b&gt;bold&lt;/b&gt;']
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
