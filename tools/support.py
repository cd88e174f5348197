"""Fail when a piece of the platform the stages run on is near its end of support.

    python3 -m tools.support   (run by ``nox -s lint``)

reads ``support.toml`` and exits 1, naming each piece, its end and what to move to,
when one of them ends within WARN_DAYS of today (or has ended).
"""

import datetime
import sys
import tomllib
from pathlib import Path

FILE = Path(__file__).resolve().parent.parent / 'support.toml'
WARN_DAYS = 90


def pieces(path=FILE):
    """{name: its table} of ``support.toml``."""
    return tomllib.loads(Path(path).read_text())


def ending(found, today, days=WARN_DAYS):
    """One line for each piece of ``found`` whose support ends within ``days`` of ``today``."""
    return [
        f'{name}: {piece["uses"]}. Its support ends on {piece["ends"]} '
        f'({(piece["ends"] - today).days} days from {today}; {piece["source"]}). '
        f'Move to {piece["next"]}.'
        for name, piece in found.items()
        if piece['ends'] - today < datetime.timedelta(days=days)
    ]


def main():
    late = ending(pieces(), datetime.date.today())
    for line in late:
        print(line, file=sys.stderr)
    if late:
        sys.exit(1)
    print(f'{FILE.name}: nothing ends within {WARN_DAYS} days')


if __name__ == '__main__':
    main()
