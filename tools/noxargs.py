"""What the noxfile reads from its command line, and the start of a run."""

import atexit
import os
import sys
from pathlib import Path

from tools import noxrun, postgres

# nox's options that list or describe sessions rather than run them.
LISTING = {'-l', '--list', '--list-sessions', '--json', '-h', '--help', '--version'}


def nox_option(argv, *names):
    """The values given to the nox option ``names`` in ``argv`` (before ``--``)."""
    argv = argv[: argv.index('--')] if '--' in argv else argv
    values, taking = [], False
    for arg in argv:
        if arg.startswith('-'):
            name, equals, value = arg.partition('=')
            taking = arg in names
            values += [value] if equals and name in names else []
        elif taking:
            values.append(arg)
    return values


def flask_option(args, long, short, default):
    """The value of ``flask run``'s option ``long``/``short`` in ``args``, else ``default``."""
    for index, arg in enumerate(args):
        if arg in (long, short) and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(f'{long}='):
            return arg.split('=', 1)[1]
    return default


def one_session(argv):
    """Whether ``argv`` names exactly one session (which then runs in this process)."""
    return len(nox_option(argv, '-s', '-e', '--session', '--sessions')) == 1


def start(argv, command):
    """Start or join the run of the nox command line ``argv``: the noxfile calls this in
    every nox process, before nox starts the --parallel ones, which must find the run.

    The process that starts it owns it: it holds the environment folder's lock (one
    run at a time per folder), deletes the run's folder and drops the databases the run
    left on the reader's server when it ends, and first checks that server once, for a
    run of several sessions, so that a server that refuses stops it with one line.
    Returns whether this process owns the run.
    """
    listing = bool(LISTING & set(argv[: argv.index('--')] if '--' in argv else argv))
    envdir = Path((nox_option(argv, '--envdir') or ['.nox'])[-1]).resolve()
    owner = noxrun.begin(envdir, command, listing)
    if owner and not listing:
        atexit.register(postgres.drop_run_databases)
        if not one_session(argv) and os.environ.get(postgres.SERVER_VARIABLE):
            try:
                postgres.server_url()
            except postgres.ServerError as error:
                sys.exit(f'nox > {error}')
    return owner
