from flask_wtf import FlaskForm
from wtforms import StringField, SubmitField
from wtforms.validators import DataRequired, Length, Regexp

from app.models import MAX_NAME_LENGTH


def strip(value):
    return value.strip() if value else value


class NameForm(FlaskForm):
    name = StringField(
        'Enter a name',
        filters=[strip],
        validators=[
            DataRequired('Please enter a name.'),
            Length(max=MAX_NAME_LENGTH, message='Names are at most %(max)d characters.'),
            # PostgreSQL cannot store the NUL character in a text column.
            Regexp(r'^[^\x00]*$', message='Names cannot contain the NUL character.'),
        ],
    )
    submit = SubmitField('Submit')
