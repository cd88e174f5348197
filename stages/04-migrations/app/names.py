from flask import Blueprint, redirect, render_template, url_for

from app import db
from app.forms import NameForm
from app.models import Name

bp = Blueprint('names', __name__)


@bp.route('/', methods=['GET', 'POST'])
def index():
    form = NameForm()
    if form.validate_on_submit():
        db.session.add(Name(name=form.name.data))
        db.session.commit()
        return redirect(url_for('names.index'))
    newest_first = db.select(Name).order_by(Name.created_at.desc(), Name.id.desc())
    names = db.session.scalars(newest_first).all()
    return render_template('index.html', form=form, names=names)
