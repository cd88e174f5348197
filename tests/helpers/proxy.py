"""A TCP proxy in front of PostgreSQL, to cut the database off and bring it back; and
the two socket helpers it shares with the tests."""

import contextlib
import socket
import threading
from urllib.parse import parse_qs, urlsplit, urlunsplit

from tools.processes import free_port


class Proxy:
    """Listens on 127.0.0.1 and forwards each connection to the server at ``url``."""

    def __init__(self, url):
        parts = urlsplit(url)
        socket_dir = parse_qs(parts.query).get('host', [''])[0]
        if socket_dir.startswith('/'):
            self._upstream = f'{socket_dir}/.s.PGSQL.{parts.port or 5432}'
        else:
            self._upstream = (parts.hostname or 'localhost', parts.port or 5432)
        self.port = free_port()
        user = parts.netloc.rpartition('@')[0]
        self.url = urlunsplit(
            parts._replace(
                netloc=f'{user}@127.0.0.1:{self.port}' if user else f'127.0.0.1:{self.port}',
                query='',
            )
        )
        self._listener = None
        self._sockets = []
        self._lock = threading.Lock()

    def start(self):
        """Accept connections again, on the same port."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(('127.0.0.1', self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self):
        """Refuse new connections and cut the open ones, as a server going down does."""
        with self._lock:
            for sock in [self._listener, *self._sockets]:  # wakes the thread in accept()
                shut(sock)
                sock.close()
            self._sockets.clear()

    def _connect_upstream(self):
        if isinstance(self._upstream, str):
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self._upstream)
            return upstream
        return socket.create_connection(self._upstream)

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            upstream = self._connect_upstream()
            with self._lock:
                self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source, target):
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            shut(sock)


def shut(sock):
    """Shut ``sock`` down both ways, whatever state it is in."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def read_to_end(sock):
    """All that ``sock`` receives until the other end closes."""
    received = b''
    while chunk := sock.recv(65536):
        received += chunk
    return received
