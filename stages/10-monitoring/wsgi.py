"""The app as `flask` and WSGI servers load it, set up by FLASK_CONFIG."""

import os
import sys

from app import create_app, db
from app.models import Name
from config import ConfigError

try:
    # No default: a server started without FLASK_CONFIG stops instead of running
    # with development's settings.
    app = create_app(os.environ.get('FLASK_CONFIG'))
except ConfigError as error:
    sys.exit(f'Error: {error}')


@app.shell_context_processor
def make_shell_context():
    return {'db': db, 'Name': Name}
