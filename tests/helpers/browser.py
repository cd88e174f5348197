"""The run's one headless Chromium, from the system, driven over the DevTools protocol.

The first test to need it starts it in the run's folder (tools/noxrun.py); the others
connect to it; the run stops it, by PID, when it ends.
"""

import fcntl
import os
import shutil
import subprocess
import time

from tools import noxrun
from tools.processes import alive

CHROMIUM = os.environ.get('APP_DEPLOY_CHROMIUM') or shutil.which('chromium') or '/usr/bin/chromium'


# Flags a headless Chromium needs as root, and to keep it off the network but for the app.
FLAGS = [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--headless',
    '--remote-debugging-address=127.0.0.1',
    '--remote-debugging-port=0',  # any free port; Chromium writes it into DevToolsActivePort
]


# The screenshots are framed in the docs at about 720 px wide: a small window, drawn
# at twice the pixels, reads well there and sharp on any screen.
VIEWPORT = {'width': 720, 'height': 360}


def run_chromium():
    """The DevTools URL of the run's Chromium, started here if it is not running yet."""
    folder = noxrun.folder()
    profile, pidfile = folder / 'chromium', folder / 'chromium.pid'
    with open(folder / 'chromium.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starts it; the others wait, then connect
        if not (pidfile.exists() and alive(int(pidfile.read_text()))):
            (profile / 'DevToolsActivePort').unlink(missing_ok=True)
            chromium = subprocess.Popen(
                [CHROMIUM, *FLAGS, f'--user-data-dir={profile}', 'about:blank'],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # it outlives these tests, to serve the next stage
                # Its singleton socket goes to the temporary folder: the run's, deleted
                # with it, not /tmp, where every run would leave one.
                env={**os.environ, 'TMPDIR': str(folder)},
            )
            pidfile.write_text(str(chromium.pid))
        port = profile / 'DevToolsActivePort'
        for _ in range(300):
            if port.exists() and port.read_text().strip():
                return f'http://127.0.0.1:{port.read_text().split()[0]}'
            time.sleep(0.05)
    raise AssertionError(f'{CHROMIUM} did not start')
