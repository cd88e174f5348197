"""One nox run: its folder, its lock on the environments, its signals, what it leaves.

A run is the nox process the reader starts, with the nox processes it starts for
``--parallel`` and everything below them. They share a folder in the temporary
directory, ``app-deploy-nox-<pid>``, named after the first process (the owner, whose
PID the others read from APP_DEPLOY_NOX_RUN); the embedded PostgreSQL lives there.
The owner deletes the folder when it ends, and a later run deletes the folders of
runs that were killed (SIGKILL), stopping what still runs in them.
"""

import atexit
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from tools.processes import alive, hold_lock, stop_pid

RUN_VARIABLE = 'APP_DEPLOY_NOX_RUN'
PREFIX = 'app-deploy-nox-'
_lock_file = None  # kept open: the lock lasts as long as the process


def owner():
    """The PID of the process that owns the current run (this one, outside nox)."""
    return int(os.environ.get(RUN_VARIABLE) or os.getpid())


def is_owner():
    return owner() == os.getpid()


def database_prefix(name):
    """The prefix of the databases that ``name`` (a session, or pytest) makes in this run."""
    return f'app_deploy_nox_{owner()}_{name.replace("-", "_")}'


def folder():
    """The run's folder, made on first use (by any process of the run)."""
    path = Path(tempfile.gettempdir()) / f'{PREFIX}{owner()}'
    path.mkdir(exist_ok=True)
    if is_owner():
        _sweep_at_exit(path)
    return path


def _sweep_at_exit(path, registered=set()):  # noqa: B006 (once per process)
    """The owner deletes the run's folder when it ends, with whatever runs in it."""
    if path not in registered:
        registered.add(path)
        atexit.register(sweep_folder, path)


# What may still run in a run's folder: the file holding its PID, and how to stop it
# (SIGINT is PostgreSQL's fast shutdown).
SERVERS = {'pgdata/postmaster.pid': signal.SIGINT, 'chromium.pid': signal.SIGTERM}


def sweep_folder(path, servers=SERVERS):
    """Stop the servers still running in a run's folder (by PID), then delete it."""
    path = Path(path)
    for pidfile, signum in servers.items():
        with contextlib.suppress(OSError, ValueError, IndexError):
            stop_pid(int((path / pidfile).read_text().split()[0]), str(path), signum)
    for _ in range(50):  # a server's last writes may still land as it ends
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            break
        time.sleep(0.1)


def sweep_stale():
    """Delete the folders of runs whose owner is gone (killed), with what runs in them.

    Also the folders ``app-deploy-pg-*`` of earlier versions of this tooling,
    whose processes are listed in the server package's ``.handle_pids.json``.
    """
    swept = []
    for path in Path(tempfile.gettempdir()).glob(f'{PREFIX}*'):
        with contextlib.suppress(ValueError):
            if not alive(int(path.name[len(PREFIX) :])):
                sweep_folder(path)
                swept.append(path)
    for path in Path(tempfile.gettempdir()).glob('app-deploy-pg-*'):
        with contextlib.suppress(OSError, ValueError):
            if not any(map(alive, json.loads((path / '.handle_pids.json').read_text()))):
                sweep_folder(path, {'postmaster.pid': signal.SIGINT})
                swept.append(path)
    return swept


def _stop_gracefully(signum, frame):
    """Ctrl-C, SIGTERM or SIGHUP: raise KeyboardInterrupt, so every finally and atexit runs.

    Later SIGTERMs and SIGHUPs are ignored, so that the cleanup the first signal
    started is not cut short (a closed terminal, a process-group kill and nox's own
    escalation after Ctrl-C each send one more); a second Ctrl-C still interrupts.
    """
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)
    raise KeyboardInterrupt(f'signal {signal.Signals(signum).name}')


def stop_on_signals():
    """Make SIGTERM and SIGHUP stop this process the way Ctrl-C does."""
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, _stop_gracefully)


def lock(envdir, command):
    """Hold ``envdir`` for this run; wait, saying so, while another run holds it."""
    global _lock_file
    _lock_file = hold_lock(
        Path(envdir) / '.app-deploy-run.lock',
        lambda holder: (
            f'Waiting for the other run (PID {holder or "?"}) that uses {envdir} to'
            f' end. To run beside it instead: {command} --envdir <another folder>'
        ),
    )


def begin(envdir, command, listing=False):
    """Start or join a run: the noxfile calls this in every nox process.

    Returns True in the process that starts the run (its owner), False in the
    others: the --parallel children, which share the owner's lock and folder.
    """
    stop_on_signals()
    if os.environ.get(RUN_VARIABLE):
        return False
    os.environ[RUN_VARIABLE] = str(os.getpid())
    _sweep_at_exit(Path(tempfile.gettempdir()) / f'{PREFIX}{owner()}')
    if not listing:
        sweep_stale()
        lock(envdir, command)
    return True


# --- What the noxfile asks at import -------------------------------------------------


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
    from tools import postgres  # which needs this module for the run's folder

    listing = bool(LISTING & set(argv[: argv.index('--')] if '--' in argv else argv))
    envdir = Path((nox_option(argv, '--envdir') or ['.nox'])[-1]).resolve()
    owner = begin(envdir, command, listing)
    if owner and not listing:
        atexit.register(postgres.drop_run_databases)
        if not one_session(argv) and os.environ.get(postgres.SERVER_VARIABLE):
            try:
                postgres.server_url()
            except postgres.ServerError as error:
                sys.exit(f'nox > {error}')
    return owner
