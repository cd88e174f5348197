import pytest
from sqlalchemy.exc import DataError, IntegrityError

from app import db
from app.models import MAX_NAME_LENGTH, Name


def test_name_is_stored(app):
    with app.app_context():
        db.session.add(Name(name='Mark'))
        db.session.commit()
        assert db.session.scalars(db.select(Name.name)).all() == ['Mark']


def test_database_records_when_a_name_was_added(app):
    with app.app_context():
        before = db.session.scalar(db.select(db.func.now()))
        db.session.commit()
        db.session.add(Name(name='Mark'))
        db.session.commit()
        created_at = db.session.scalars(db.select(Name.created_at)).one()
        assert created_at.tzinfo is not None
        assert created_at >= before


def test_name_is_required(app):
    with app.app_context():
        db.session.add(Name(name=None))
        with pytest.raises(IntegrityError):
            db.session.commit()


def test_name_length_is_enforced_by_the_database(app):
    with app.app_context():
        db.session.add(Name(name='x' * (MAX_NAME_LENGTH + 1)))
        with pytest.raises(DataError):
            db.session.commit()
