from flask import Blueprint, abort, current_app, redirect, render_template, request, url_for

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
    # One page of names, ?page=2 for the next: a page stays small however many there are.
    per_page = current_app.config['NAMES_PER_PAGE']
    # A page so far on that its offset overflows PostgreSQL's bigint would be a 500.
    if request.args.get('page', 1, type=int) > 2**63 // per_page:
        abort(404)
    names = db.paginate(newest_first, per_page=per_page)
    return render_template('index.html', form=form, names=names)
