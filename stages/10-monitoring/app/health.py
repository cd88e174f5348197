from flask import Blueprint
from sqlalchemy import exc

from app import RETRY_AFTER_SECONDS, db

bp = Blueprint('health', __name__)


@bp.route('/health')
def health():
    """For monitors and load balancers: 200 while the database answers, else 503.

    The answer says nothing more, so it tells an attacker nothing.
    """
    try:
        db.session.execute(db.select(1))
    except (exc.OperationalError, exc.TimeoutError):
        return {'status': 'unavailable'}, 503, {'Retry-After': RETRY_AFTER_SECONDS}
    return {'status': 'ok'}
