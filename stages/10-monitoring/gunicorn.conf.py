"""gunicorn's settings for the app: gunicorn --config gunicorn.conf.py wsgi:app

gunicorn reads this file when it starts and again on a reload (SIGHUP). Settings:
https://docs.gunicorn.org/en/stable/settings.html
"""

import os

from prometheus_client import multiprocess

# Where to listen: a loopback port to try it by hand, or GUNICORN_BIND. On the server,
# systemd opens the socket nginx proxies to and hands it over (deploy/app-deploy@.socket).
bind = os.environ.get('GUNICORN_BIND', '127.0.0.1:8000')

# Sync workers, each serving one request at a time; nginx buffers slow clients for them.
# 2 per core + 1 is gunicorn's advice; WEB_CONCURRENCY, which gunicorn reads, overrides it.
workers = int(os.environ.get('WEB_CONCURRENCY', 2 * os.cpu_count() + 1))

# A worker silent for 30 s is killed and replaced; on a reload or a stop, workers
# get 30 s to finish the requests they are serving.
timeout = 30
graceful_timeout = 30

# nginx refuses request lines over 8 KB and headers over 8 KB each with its own page;
# take whatever it passes on, so that no refusal is gunicorn's page (its defaults are
# 4 KB and 100 headers). These are gunicorn's largest, or above what nginx lets through.
limit_request_line = 8190
limit_request_fields = 32768
limit_request_field_size = 16384

# Load the app in the master before forking workers, so a configuration error stops
# gunicorn with the app's one-line message instead of restarting workers forever.
# A reload (SIGHUP) forks fresh workers from that app: deploy new code with a restart.
preload_app = True

# One access log line per request on stdout (the journal), with the client address
# nginx passes on; gunicorn's own messages go to stderr.
accesslog = '-'
access_log_format = '%({x-forwarded-for}i)s "%(r)s" %(s)s %(b)s %(M)sms'

# No control socket (gunicorn 25.1+): systemd stops and reloads gunicorn with signals,
# and without XDG_RUNTIME_DIR its path, ~/.gunicorn/gunicorn.ctl, is the user's, shared.
control_socket_disable = True


# The app's metrics (app/metrics.py): each worker writes its numbers to files in
# PROMETHEUS_MULTIPROC_DIR, which systemd makes empty at each start. When a worker
# ends, drop its files that count only while it lives (live gauges); its counters
# stay. Without the folder (gunicorn by hand, the container) each worker keeps its
# own numbers in memory, and /metrics shows those of the worker that answers.
def child_exit(server, worker):
    if 'PROMETHEUS_MULTIPROC_DIR' in os.environ:
        multiprocess.mark_process_dead(worker.pid)
