"""Run one-shot ``flask`` commands fast: import the stage's libraries once, fork for each.

Started by ``tests/reader.py`` with a stage's Python: ``python preload.py SOCKET``.
Each request on the Unix socket SOCKET is one JSON line, ``{"argv", "env", "cwd",
"files"}`` (the paths for stdin, stdout and stderr); the server forks, the child
becomes that command (``flask`` with that environment, folder and files, importing
the stage's own modules afresh) and the server answers the child's PID, then its exit
code. Importing Flask, SQLAlchemy and the rest is most of a ``flask`` command's
time; a fork skips it. The server ends when its parent (pytest) does.
"""

import importlib
import json
import os
import socket
import sys
import traceback

LIBRARIES = ['flask', 'flask.cli', 'flask_sqlalchemy', 'flask_wtf', 'flask_migrate', 'psycopg2']


def become(request):
    """In the forked child: run the command as the ``flask`` script would; never return."""
    write = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for number, (path, flags) in enumerate(
        zip(request['files'], (os.O_RDONLY, write, write), strict=True)
    ):
        os.dup2(os.open(path, flags), number)
    os.environ.clear()
    os.environ.update(request['env'])
    os.chdir(request['cwd'])
    sys.argv = request['argv']
    sys.path[0] = os.path.dirname(request['argv'][0])  # as for the console script
    code = 0
    try:
        from flask.cli import main

        main()
    except SystemExit as exit:  # as the interpreter reports it
        if isinstance(exit.code, str):
            print(exit.code, file=sys.stderr)
            code = 1
        else:
            code = exit.code or 0
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(path):
    for name in LIBRARIES:
        try:
            importlib.import_module(name)
        except ImportError:  # not in this stage
            pass
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(f'{path}.new')
    listener.listen()
    os.rename(f'{path}.new', path)  # the client waits for this name: we listen already
    listener.settimeout(1)
    while os.getppid() == parent:
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        with connection, connection.makefile('rw') as stream:
            request = json.loads(stream.readline())
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                become(request)
            stream.write(f'{pid}\n')
            stream.flush()
            _, status = os.waitpid(pid, 0)
            stream.write(f'{os.waitstatus_to_exitcode(status)}\n')


if __name__ == '__main__':
    main(sys.argv[1])
