"""A TCP relay across network namespaces through a Unix socket (a file, which
every namespace sees): a process in a lab node's namespace (kube-proxy) can
reach the API server on the root namespace's loopback without any interface,
route or rule being added to the root namespace.

    root namespace:  UnixToTCP(path, host, port)  (a thread of the test)
    lab namespace:   ip netns exec NS python3 relay.py PORT PATH
                     listens on 127.0.0.1:PORT there, prints "ready"."""

from __future__ import annotations

import os
import socket
import sys
import threading


def _pipe(a: socket.socket, b: socket.socket) -> None:
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve(listener: socket.socket, connect) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            upstream = connect()
        except OSError:
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


class UnixToTCP:
    """Accepts on a Unix socket at `path`, connects each to host:port."""

    def __init__(self, path: str, host: str, port: int):
        self.path = path
        if os.path.exists(path):
            os.unlink(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(64)
        threading.Thread(target=_serve, args=(self.listener, lambda: socket.create_connection((host, port))),
                         daemon=True).start()

    def close(self) -> None:
        self.listener.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


def main() -> None:
    port, path = int(sys.argv[1]), sys.argv[2]
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)

    def connect():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        return s
    print("ready", flush=True)
    _serve(listener, connect)


if __name__ == "__main__":
    main()
