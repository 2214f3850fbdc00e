"""A TCP proxy on a loopback port, in front of a server, that a test can take down and up.

The worker's S3 traffic is pointed at it (``AWS_ENDPOINT_URL_S3``; its SQS traffic goes to
moto directly): ``down()`` cuts every open connection and resets each new one at once, which
boto3 sees as an endpoint that does not answer, for as long as the test wants; ``up()``
forwards again. The port stays the same throughout, so nobody else can take it meanwhile.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from urllib.parse import urlsplit


class TcpProxy:
    def __init__(self, target_url: str) -> None:
        target = urlsplit(target_url)
        self._target = (target.hostname, target.port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._down = False
        self.reset = 0  # connections reset while down
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    def down(self) -> None:
        with self._lock:
            self._down = True
            open_now, self._open = self._open, set()
        for sock in open_now:
            _reset(sock)

    def up(self) -> None:
        with self._lock:
            self._down = False

    def close(self) -> None:
        self.down()
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:  # closed
                return
            with self._lock:
                down = self._down
                if down:
                    self.reset += 1
            if down:
                _reset(client)
                continue
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._target)
        except OSError:
            _reset(client)
            return
        with self._lock:
            self._open.update((client, upstream))
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)


def pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until either ends, then shut both down."""
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for sock in (source, sink):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a dead endpoint's host answers."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
