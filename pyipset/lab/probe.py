"""What runs inside a lab pod's network namespace: a server that answers on
one port (TCP accept, UDP echo, SCTP INIT -> INIT ACK), and a prober that
tries one connection to each given address and reports which succeeded.

SCTP without SCTP sockets: kernels built without CONFIG_IP_SCTP (this one)
still track SCTP in conntrack and deliver protocol 132 to raw sockets. The
prober sends an INIT chunk (valid CRC32c, a fresh source port and initiate
tag per target) from a raw socket, and a connection counts as made when the
matching INIT ACK comes back; the server answers INITs for its port from a
raw socket bound to each of its addresses. That is the association's first
round trip, as SYN / SYN-ACK is TCP's: the INIT is the NEW packet policy
judges, the INIT ACK the reply conntrack lets through. A kernel whose raw
sockets refuse protocol 132 makes both sides fail with that reason.

    python -m pyipset.lab.probe serve --port 80 [--port 8080 ...] ADDR...
    python -m pyipset.lab.probe probe --protocol TCP --port 80 --timeout 1.0 ADDR...
    python -m pyipset.lab.probe probe-many --timeout 1.0 TCP/80/ADDR UDP/53/ADDR ...
    python -m pyipset.lab.probe watch --protocol TCP --port 80 --seconds 5 ADDR
    python -m pyipset.lab.probe burst --protocol TCP --port 80 --count 1000 ADDR
    python -m pyipset.lab.probe stream-serve --port 7000 --seconds 6 ADDR...
    python -m pyipset.lab.probe stream --protocol TCP --port 7000 --seconds 5 ADDR

stream-serve and stream hold long-lived flows (revocation tests) until
SIGTERM (--seconds at most): each end sends a numbered, timestamped message
every STREAM_INTERVAL, whether or not the other end does, and records each
message it receives (number, sent at, received at; time.time()); at the end
each prints what it received as JSON, and a TCP end how many segments it
retransmitted. A TCP end whose connection is reset stops and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys

from ..protocols import NUMBERS

IPPROTO_SCTP = NUMBERS["SCTP"]
SCTP_INIT, SCTP_INIT_ACK = 1, 2


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


# ---- SCTP over raw sockets ----

def _crc32c_table() -> list:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as SCTP's checksum (RFC 9260 appendix A)."""
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def sctp_packet(sport: int, dport: int, vtag: int, chunk_type: int, init_tag: int, params: bytes = b"") -> bytes:
    """An SCTP packet with one INIT or INIT ACK chunk: a_rwnd 65535, one
    stream each way, initial TSN = the tag. The checksum goes in little-endian
    (the CRC's bytes in the order they are computed), as Linux writes it."""
    chunk = struct.pack("!BBHIIHHI", chunk_type, 0, 20 + len(params), init_tag, 65535, 1, 1, init_tag) + params
    header = struct.pack("!HHII", sport, dport, vtag, 0)
    packet = header + chunk
    return packet[:8] + struct.pack("<I", crc32c(packet)) + packet[12:]


def parse_sctp(packet: bytes):
    """(sport, dport, vtag, first chunk type, its initiate tag) of a packet
    whose checksum is right and whose first chunk is an INIT or INIT ACK;
    None for anything else."""
    if len(packet) < 32:
        return None
    sport, dport, vtag, checksum = struct.unpack("!HHI4s", packet[:12])
    if struct.unpack("<I", checksum)[0] != crc32c(packet[:8] + bytes(4) + packet[12:]):
        return None
    chunk_type, _, length, init_tag = struct.unpack("!BBHI", packet[12:20])
    if chunk_type not in (SCTP_INIT, SCTP_INIT_ACK) or length < 20:
        return None
    return sport, dport, vtag, chunk_type, init_tag


def sctp_socket(fam: int) -> socket.socket:
    try:
        return socket.socket(fam, socket.SOCK_RAW, IPPROTO_SCTP)
    except OSError as e:
        raise SystemExit(f"SCTP cannot be probed here: raw sockets for protocol 132 are refused ({e.strerror}); "
                         "the verifier's SCTP answers can only be checked against the rules") from None


def _payload(fam: int, data: bytes) -> bytes:
    """A raw IPv4 socket reads the IP header too; IPv6 gives the payload."""
    return data[(data[0] & 0x0F) * 4:] if fam == socket.AF_INET and data else data


def _sctp_waiting(s: socket.socket):
    """(parsed packet, sender) of every INIT or INIT ACK waiting on the
    non-blocking raw socket s (see parse_sctp); anything else is skipped."""
    while True:
        try:
            data, peer = s.recvfrom(65535)
        except (BlockingIOError, InterruptedError):
            return
        got = parse_sctp(_payload(s.family, data))
        if got is not None:
            yield got, peer


def _sctp_answer(s: socket.socket, ports) -> None:
    """Answers every INIT waiting on raw socket s for one of `ports` with an INIT ACK."""
    for got, peer in _sctp_waiting(s):
        if got[1] not in ports or got[3] != SCTP_INIT or got[2] != 0:
            continue
        sport, port, _, _, their_tag = got
        cookie = os.urandom(8)  # State Cookie parameter (type 7), which an INIT ACK must carry
        reply = sctp_packet(port, sport, their_tag, SCTP_INIT_ACK, int.from_bytes(os.urandom(4), "big") | 1,
                            struct.pack("!HH", 7, 4 + len(cookie)) + cookie)
        try:
            s.sendto(reply, (peer[0], 0))
        except OSError:
            pass


def _listen(addr: str, port: int, backlog: int) -> list:
    """[a listening TCP socket, a bound UDP socket] on addr:port."""
    fam = _family(addr)
    t = socket.socket(fam, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((addr, port))
    t.listen(backlog)
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.bind((addr, port))
    return [t, u]


def serve(ports, addrs: list) -> None:
    """TCP, UDP and SCTP on each of `ports` (one port or several) on each of the
    pod's addresses; prints 'ready' (SCTP only where raw sockets take protocol
    132: see sctp_socket)."""
    ports = {ports} if isinstance(ports, int) else set(ports)
    socks, sctp = [], set()
    for addr in addrs:
        fam = _family(addr)
        for port in sorted(ports):
            socks += _listen(addr, port, 4096)
        try:
            r = socket.socket(fam, socket.SOCK_RAW, IPPROTO_SCTP)
        except OSError:
            continue  # the prober says why SCTP cannot be probed
        r.bind((addr, 0))  # only packets to this address
        socks.append(r)
        sctp.add(r)
    print("ready", flush=True)
    for s in socks:
        s.setblocking(False)
    while True:
        readable, _, _ = select.select(socks, [], [])
        for s in readable:
            if s in sctp:
                _sctp_answer(s, ports)
                continue
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
    if protocol == "SCTP":
        return probe_sctp(port, timeout, [addr])[0]
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


def probe_sctp(port: int, timeout: float, addrs: list) -> list:
    """An INIT to each address at once (sent again every third of the
    timeout, as SCTP retransmits an INIT); True where the INIT ACK with our
    tag, from that address and port, came back in time."""
    import random
    import time
    results = [False] * len(addrs)
    socks = {}
    for addr in addrs:
        fam = _family(addr)
        if fam not in socks:
            socks[fam] = sctp_socket(fam)
            socks[fam].setblocking(False)
    base = random.randrange(20000, 60000 - len(addrs))
    waiting = {}  # (address, our port, our tag) -> index
    packets = []
    for i, addr in enumerate(addrs):
        tag = random.randrange(1, 1 << 32)
        waiting[(socket.inet_pton(_family(addr), addr), base + i, tag)] = i
        packets.append((i, socks[_family(addr)], sctp_packet(base + i, port, 0, SCTP_INIT, tag), addr))
    deadline = time.monotonic() + timeout
    next_send = time.monotonic()
    try:
        while waiting:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_send:
                for i, s, packet, addr in packets:
                    if not results[i]:
                        try:
                            s.sendto(packet, (addr, 0))
                        except OSError:
                            pass
                next_send = now + timeout / 3
            readable, _, _ = select.select(list(socks.values()), [], [],
                                           max(0.0, min(deadline, next_send) - time.monotonic()))
            for s in readable:
                for got, peer in _sctp_waiting(s):
                    if got[3] != SCTP_INIT_ACK or got[0] != port:
                        continue
                    key = (socket.inet_pton(s.family, peer[0].split("%")[0]), got[1], got[2])
                    i = waiting.pop(key, None)
                    if i is not None:
                        results[i] = True
    finally:
        for s in socks.values():
            s.close()
    return results


def probe(protocol: str, port: int, timeout: float, addrs: list) -> list:
    """One connection attempt to each address at once, from one thread: TCP
    connects without blocking and waits for each to finish; UDP sends a
    numbered request and sends it again every third of the timeout until the
    echo comes back, so one lost datagram is not taken for a verdict. SCTP:
    probe_sctp."""
    if protocol == "SCTP":
        return probe_sctp(port, timeout, addrs)
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


def probe_many(targets: list, timeout: float) -> list:
    """probe() for (protocol, port, address) targets of several protocols and
    ports at once: a thread per (protocol, port); answers in target order."""
    import threading
    groups: dict = {}
    for i, (protocol, port, addr) in enumerate(targets):
        groups.setdefault((protocol, port), []).append((i, addr))
    results = [False] * len(targets)

    def run(protocol, port, items):
        for (i, _), ok in zip(items, probe(protocol, port, timeout, [a for _, a in items])):
            results[i] = ok
    threads = [threading.Thread(target=run, args=(*key, items)) for key, items in groups.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
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


STREAM_INTERVAL = 0.02  # seconds between the messages each end of a stream sends
# One stream message: its sequence number on its flow and direction (from 1) and
# the sender's clock when sent. Each end records when it sent each message and
# when it read each one it received, so a check can tell a message the network
# lost (sent, never received; for TCP, a segment retransmitted) from one a
# process starved of CPU sent or read late.
_MESSAGE = struct.Struct("!Qd")
_TCPI_TOTAL_RETRANS = 100  # offset of tcpi_total_retrans in struct tcp_info (linux/tcp.h)


class _Stopped:
    """SIGTERM ends a stream at its next step: it then reports what it saw."""

    def __init__(self):
        import signal
        self.stopped = False
        signal.signal(signal.SIGTERM, self._stop)

    def _stop(self, *_):
        self.stopped = True


class _End:
    """One end of a stream: what it sent (the send time of message n at n - 1)
    and each message it received as [number, sent at, received at]."""

    def __init__(self, sock: socket.socket, record: dict):
        self.sock, self.record, self.pending = sock, record, b""
        record.update({"received": [], "sent": [], "error": "", "retransmits": None})

    def send(self, send) -> None:
        """The next message, through send(bytes); recorded once sent."""
        import time
        now = time.time()
        send(_MESSAGE.pack(len(self.record["sent"]) + 1, now))
        self.record["sent"].append(now)

    def take(self, data: bytes, now: float) -> None:
        """[sequence number, sent at, received at] for each whole message in data."""
        self.pending += data
        whole = len(self.pending) - len(self.pending) % _MESSAGE.size
        for offset in range(0, whole, _MESSAGE.size):
            self.record["received"].append([*_MESSAGE.unpack_from(self.pending, offset), now])
        self.pending = self.pending[whole:]

    def finish(self) -> None:
        """A TCP end's retransmissions: a segment the network dropped was sent again."""
        if self.sock.type == socket.SOCK_STREAM and self.record["retransmits"] is None:
            try:
                info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_TOTAL_RETRANS + 4)
                self.record["retransmits"] = struct.unpack_from("I", info, _TCPI_TOTAL_RETRANS)[0]
            except OSError:
                pass


def stream_serve(port: int, seconds: float, addrs: list) -> dict:
    """Accepts TCP connections and UDP peers on `port` until SIGTERM (at most
    `seconds`), sends each peer a message every STREAM_INTERVAL and records
    what each sent: {"tcp"|"udp": {"ADDR:PORT": record}}, a record as
    _End keeps it."""
    import time
    stop = _Stopped()
    listeners, udp = [], []
    for addr in addrs:
        t, u = _listen(addr, port, 64)
        listeners.append(t)
        udp.append(u)
    print("ready", flush=True)
    peers: dict = {}  # TCP socket or (UDP socket, address) -> _End
    out: dict = {"tcp": {}, "udp": {}}
    end = time.monotonic() + seconds
    next_send = time.monotonic()

    def close(sock, error):
        peers[sock].record["error"] = peers[sock].record["error"] or error
        peers.pop(sock).finish()
        sock.close()
    while not stop.stopped and time.monotonic() < end:
        tcp_peers = [s for s in peers if isinstance(s, socket.socket)]
        readable, _, _ = select.select(listeners + udp + tcp_peers, [], [], max(0.0, next_send - time.monotonic()))
        now = time.time()
        for s in readable:
            if s in listeners:
                conn, peer = s.accept()
                conn.setblocking(False)
                peers[conn] = _End(conn, out["tcp"].setdefault(f"{peer[0]}:{peer[1]}", {}))
            elif s in udp:
                data, peer = s.recvfrom(2048)
                if (s, peer) not in peers:
                    peers[(s, peer)] = _End(s, out["udp"].setdefault(f"{peer[0]}:{peer[1]}", {}))
                peers[(s, peer)].take(data, now)
            else:
                try:
                    data = s.recv(4096)
                except OSError as exc:
                    close(s, os.strerror(exc.errno or 0))
                    continue
                if data:
                    peers[s].take(data, now)
                else:
                    close(s, "closed by the other end")
        if time.monotonic() >= next_send:
            next_send += STREAM_INTERVAL
            for key, end_ in list(peers.items()):
                try:
                    end_.send(key.send if isinstance(key, socket.socket) else
                              lambda data, key=key: key[0].sendto(data, key[1]))
                except OSError as exc:
                    if not isinstance(key, tuple):
                        close(key, os.strerror(exc.errno or 0))
    for key in [k for k in peers if isinstance(k, socket.socket)]:
        close(key, "")
    return out


def stream(protocol: str, addr: str, port: int, seconds: float) -> dict:
    """One flow to addr:port until SIGTERM (at most `seconds`): sends a message
    every STREAM_INTERVAL, records what came back: an _End's record with the
    flow's source port."""
    import time
    stop = _Stopped()
    fam = _family(addr)
    s = socket.socket(fam, socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM)
    s.settimeout(2.0)
    s.connect((addr, port))
    s.setblocking(False)
    record: dict = {"port": s.getsockname()[1]}
    me = _End(s, record)
    end = time.monotonic() + seconds
    next_send = time.monotonic()
    while not stop.stopped and time.monotonic() < end:
        readable, _, _ = select.select([s], [], [], max(0.0, next_send - time.monotonic()))
        if readable:
            try:
                data = s.recv(4096)
            except ConnectionRefusedError:
                data = None  # UDP: an ICMP error for an earlier datagram; the flow goes on
            except OSError as exc:
                record["error"] = os.strerror(exc.errno or 0)
                break
            if data == b"":
                record["error"] = "closed by the other end"
                break
            if data:
                me.take(data, time.time())
        if time.monotonic() >= next_send:
            next_send += STREAM_INTERVAL
            try:
                me.send(s.send)
            except ConnectionRefusedError:
                pass
            except OSError as exc:
                record["error"] = os.strerror(exc.errno or 0)
                break
    me.finish()
    s.close()
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyipset.lab.probe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True, action="append")
    s.add_argument("addrs", nargs="+")
    m = sub.add_parser("probe-many")
    m.add_argument("--timeout", type=float, default=1.0)
    m.add_argument("targets", nargs="*", help="PROTOCOL/PORT/ADDRESS")
    p = sub.add_parser("probe")
    p.add_argument("--protocol", choices=["TCP", "UDP", "SCTP"], required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("addrs", nargs="*")
    w = sub.add_parser("watch")
    w.add_argument("--protocol", choices=["TCP", "UDP", "SCTP"], required=True)
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--seconds", type=float, required=True)
    w.add_argument("--interval", type=float, default=0.01)
    w.add_argument("--timeout", type=float, default=0.25)
    w.add_argument("addr")
    b = sub.add_parser("burst")
    b.add_argument("--protocol", choices=["TCP", "UDP", "SCTP"], required=True)
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--count", type=int, required=True)
    b.add_argument("--timeout", type=float, default=1.0)
    b.add_argument("addr")
    ss = sub.add_parser("stream-serve")
    ss.add_argument("--port", type=int, required=True)
    ss.add_argument("--seconds", type=float, required=True)
    ss.add_argument("addrs", nargs="+")
    sc = sub.add_parser("stream")
    sc.add_argument("--protocol", choices=["TCP", "UDP"], required=True)
    sc.add_argument("--port", type=int, required=True)
    sc.add_argument("--seconds", type=float, required=True)
    sc.add_argument("addr")
    args = parser.parse_args(argv)
    if args.cmd == "stream-serve":
        print(json.dumps(stream_serve(args.port, args.seconds, args.addrs)))
        return 0
    if args.cmd == "stream":
        print(json.dumps(stream(args.protocol, args.addr, args.port, args.seconds)))
        return 0
    if args.cmd == "burst":
        print(json.dumps(burst(args.protocol, args.addr, args.port, args.count, args.timeout)))
        return 0
    if args.cmd == "watch":
        print(json.dumps(watch(args.protocol, args.addr, args.port, args.seconds, args.interval, args.timeout)))
        return 0
    if args.cmd == "serve":
        serve(args.port, args.addrs)
        return 0
    if args.cmd == "probe-many":
        targets = []
        for t in args.targets:
            protocol, port, addr = t.split("/", 2)
            if protocol not in ("TCP", "UDP", "SCTP"):
                parser.error(f"{t}: the protocol is TCP, UDP or SCTP")
            targets.append((protocol, int(port), addr))
        print(json.dumps(probe_many(targets, args.timeout)))
        return 0
    print(json.dumps(probe(args.protocol, args.port, args.timeout, args.addrs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
