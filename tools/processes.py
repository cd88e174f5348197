"""What every harness here shares: a command that says why it failed, a lock that says
what it waits for, processes found and stopped by PID, a free port."""

import contextlib
import fcntl
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class CommandError(RuntimeError):
    """A command failed; the message is the command and what it printed on stderr."""


def sh(*args, error=CommandError, **kwargs):
    """Run a command, check it, return its output; a failure raises ``error`` naming it."""
    args = [str(arg) for arg in args]
    result = subprocess.run(args, text=True, capture_output=True, **kwargs)
    if result.returncode:
        raise error(f'{shlex.join(args)}: {result.stderr.strip()}')
    return result.stdout


def hold_lock(path, waiting):
    """Take an exclusive lock on the file ``path`` and return the open file, which holds
    it until closed; while another process holds it, print ``waiting(holder)`` first
    (``holder``: what that process wrote in the file) and wait."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path, 'a+')
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        print(waiting(lock.read().strip()), file=sys.stderr, flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


@contextlib.contextmanager
def locked(path, waiting):
    """Hold the lock on ``path`` for the block; say ``waiting`` while another holds it."""
    with hold_lock(path, lambda holder: waiting):
        yield


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stat_fields(pid):
    """The fields of ``/proc/PID/stat`` after the command (whose parentheses may hold
    spaces): the state is [0], the parent [1], utime and stime [11] and [12]."""
    return Path(f'/proc/{pid}/stat').read_text().rpartition(')')[2].split()


def children(pid):
    """The PIDs of the processes whose parent is ``pid``."""
    found = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        with contextlib.suppress(OSError, IndexError):
            if int(stat_fields(stat.parent.name)[1]) == pid:
                found.append(int(stat.parent.name))
    return sorted(found)


def stop_pid(pid, expected, signum):
    """Stop the process ``pid`` with ``signum`` if its command line holds ``expected``
    (else the PID was reused by another program: leave it); kill it after 5 s."""
    try:
        command = Path(f'/proc/{pid}/cmdline').read_bytes().replace(b'\0', b' ').decode()
    except OSError:
        return
    if expected not in command:
        return
    os.kill(pid, signum)
    for _ in range(50):
        if not alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def stop_group(process, signum, seconds=15):
    """Send ``signum`` to ``process`` (a Popen started in a session of its own); after
    ``seconds``, kill its process group: the workers of gunicorn or nginx."""
    if process.poll() is None:
        process.send_signal(signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(seconds)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def start_piped(command, **kwargs):
    """Start ``command`` in a session of its own (so that a signal to its group reaches
    all it starts, and Ctrl-C in our terminal does not), its output and errors in one
    text pipe; return the Popen."""
    return subprocess.Popen(
        [str(arg) for arg in command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    return free_ports(1)[0]


def free_ports(count):
    """``count`` different TCP ports on 127.0.0.1 that nothing listens on now (held open
    together while they are picked: one after the other, the kernel may give one twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(('127.0.0.1', 0))
        return [sock.getsockname()[1] for sock in socks]


def port_taken(host, port):
    """Whether something listens on ``host``:``port`` already (bound as flask run binds)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
        except OSError:
            return True
    return False
