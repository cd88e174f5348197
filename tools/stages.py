"""The one list of stages: every directory under ``stages/``, by number."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# '01' -> ROOT/stages/01-hello-world, '02' -> ..., in order.
STAGES = {path.name[:2]: path for path in sorted((ROOT / 'stages').iterdir()) if path.is_dir()}


def title(directory):
    """The stage's title, from the first line of its README: 'Stage 04: migrations'."""
    return (Path(directory) / 'README.md').read_text().splitlines()[0].lstrip('#').strip()


def flask_app(directory):
    """What FLASK_APP names in the stage: its app module."""
    return 'wsgi.py' if (Path(directory) / 'wsgi.py').exists() else 'app.py'


def setup_command(directory):
    """The command that makes the stage's tables: migrations from stage 04 on."""
    if (Path(directory) / 'migrations').is_dir():
        return 'flask db upgrade'
    return 'flask create-tables'
