"""What runs inside a lab pod's network namespace: a server that answers on
one port (TCP accept, UDP echo), and a prober that tries one connection to
each given address and reports which succeeded.

    python -m pyipset.lab.probe serve --port 80
    python -m pyipset.lab.probe probe --protocol TCP --port 80 --timeout 1.0 ADDR...
    python -m pyipset.lab.probe watch --protocol TCP --port 80 --seconds 5 ADDR
    python -m pyipset.lab.probe burst --protocol TCP --port 80 --count 1000 ADDR
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def serve(port: int, addrs: list) -> None:
    """TCP and UDP on `port` on each of the pod's addresses; prints 'ready'."""
    socks = []
    for addr in addrs:
        fam = _family(addr)
        t = socket.socket(fam, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((addr, port))
        t.listen(4096)
        u = socket.socket(fam, socket.SOCK_DGRAM)
        u.bind((addr, port))
        socks += [t, u]
    print("ready", flush=True)
    for s in socks:
        s.setblocking(False)
    while True:
        readable, _, _ = select.select(socks, [], [])
        for s in readable:
            while True:  # everything that is waiting: a full accept queue drops SYNs
                try:
                    if s.type == socket.SOCK_STREAM:
                        conn, _ = s.accept()
                        conn.close()
                    else:
                        data, peer = s.recvfrom(2048)
                        s.sendto(b"pong:" + data, peer)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break


def probe_one(protocol: str, addr: str, port: int, timeout: float) -> bool:
    fam = _family(addr)
    if protocol == "TCP":
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect((addr, port))
                return True
            except OSError:
                return False
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(b"ping", (addr, port))
            data, _ = s.recvfrom(2048)
            return data == b"pong:ping"
        except OSError:
            return False


def probe(protocol: str, port: int, timeout: float, addrs: list) -> list:
    """One connection attempt to each address at once, from one thread: TCP
    connects without blocking and waits for each to finish; UDP sends a
    numbered request and sends it again every third of the timeout until the
    echo comes back, so one lost datagram is not taken for a verdict."""
    import errno
    import time
    results = [False] * len(addrs)
    poller = select.poll()
    socks = {}  # fd -> (index, socket)
    deadline = time.monotonic() + timeout
    try:
        for i, addr in enumerate(addrs):
            s = socket.socket(_family(addr), socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM)
            s.setblocking(False)
            socks[s.fileno()] = (i, s)
            if protocol == "TCP":
                err = s.connect_ex((addr, port))
                if err not in (0, errno.EINPROGRESS):
                    del socks[s.fileno()]
                    s.close()
                    continue
                poller.register(s, select.POLLOUT)
            else:
                s.connect((addr, port))
                poller.register(s, select.POLLIN)
        next_send = time.monotonic()
        pending = len(socks)
        while pending:
            now = time.monotonic()
            if now >= deadline:
                break
            if protocol == "UDP" and now >= next_send:
                for fd, (i, s) in socks.items():
                    if not results[i]:
                        try:
                            s.send(b"ping:%d" % i)
                        except OSError:
                            pass
                next_send = now + timeout / 3
            wait = min(deadline, next_send) if protocol == "UDP" else deadline
            for fd, _ in poller.poll(max(0.0, wait - time.monotonic()) * 1000):
                i, s = socks[fd]
                poller.unregister(fd)
                pending -= 1
                if protocol == "TCP":
                    results[i] = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                else:
                    try:
                        results[i] = s.recv(2048) == b"pong:ping:%d" % i
                    except OSError:
                        results[i] = False
    finally:
        for _, s in socks.values():
            s.close()
    return results


def watch(protocol: str, addr: str, port: int, seconds: float, interval: float, timeout: float) -> dict:
    """Connects again and again for `seconds`; counts what got through and what did not."""
    import time
    ok = fail = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if probe_one(protocol, addr, port, timeout):
            ok += 1
        else:
            fail += 1
        time.sleep(interval)
    return {"ok": ok, "fail": fail}


def burst(protocol: str, addr: str, port: int, count: int, timeout: float) -> dict:
    """`count` connections one after another: how many got through, and the seconds they took."""
    import time
    start = time.perf_counter()
    ok = sum(probe_one(protocol, addr, port, timeout) for _ in range(count))
    return {"ok": ok, "seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyipset.lab.probe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("addrs", nargs="+")
    p = sub.add_parser("probe")
    p.add_argument("--protocol", choices=["TCP", "UDP"], required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("addrs", nargs="*")
    w = sub.add_parser("watch")
    w.add_argument("--protocol", choices=["TCP", "UDP"], required=True)
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--seconds", type=float, required=True)
    w.add_argument("--interval", type=float, default=0.01)
    w.add_argument("--timeout", type=float, default=0.25)
    w.add_argument("addr")
    b = sub.add_parser("burst")
    b.add_argument("--protocol", choices=["TCP", "UDP"], required=True)
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--count", type=int, required=True)
    b.add_argument("--timeout", type=float, default=1.0)
    b.add_argument("addr")
    args = parser.parse_args(argv)
    if args.cmd == "burst":
        print(json.dumps(burst(args.protocol, args.addr, args.port, args.count, args.timeout)))
        return 0
    if args.cmd == "watch":
        print(json.dumps(watch(args.protocol, args.addr, args.port, args.seconds, args.interval, args.timeout)))
        return 0
    if args.cmd == "serve":
        serve(args.port, args.addrs)
        return 0
    print(json.dumps(probe(args.protocol, args.port, args.timeout, args.addrs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
