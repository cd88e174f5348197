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
