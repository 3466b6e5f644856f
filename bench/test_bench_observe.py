"""What policy blocks, measured: how many blocked-connection events one core
takes from NFLOG datagrams to attributed JSON log lines, and how long a
blocked packet takes to become a log line.

- Throughput: datagrams of 64 NFLOG messages (the reader's queue threshold),
  built as the kernel builds them, for blocked attempts between random pods of
  a synthetic cluster of 10k pods / 1,000 policies; each goes through the
  agent's BlockReporter.handle (decode, attribution against the compiled
  program, the JSON log line written to a stream, the metrics), one thread.
  Target: >= 100k events/s.
- Latency: a lab node holding the three-tier program, the reporter bound to
  its NFLOG group as in the agent; SYNs of blocked connections sent from a
  pod one at a time; from the send to the log line written. Target: p99
  <= 50 ms."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time

import numpy as np
import pytest

import synthetic
from pyipset.agent.logs import JsonFormatter, StructuredLines
from pyipset.agent.metrics import Metrics
from pyipset.compile.compiler import compile_cluster
from pyipset.observe import attribution
from pyipset.observe.nflog import QUEUE_THRESHOLD
from nflogwire import ipv4, message, tcp_syn

EVENTS = 20_000


@pytest.fixture(scope="module")
def workload():
    c = synthetic.cluster(10_000, 1_000)
    programs = [compile_cluster(c, "inet")]
    rng = np.random.default_rng(5)
    ips = [int(p.ips[0]) for p in c.pods]
    src, dst = rng.choice(ips, EVENTS), rng.choice(ips, EVENTS)
    messages = [message(ipv4(int(s), int(d), 6, tcp_syn(20000 + i % 40000, 5432, options=20)), seq=i)
                for i, (s, d) in enumerate(zip(src, dst))]
    datagrams = [b"".join(messages[i:i + QUEUE_THRESHOLD]) for i in range(0, EVENTS, QUEUE_THRESHOLD)]
    return c, programs, datagrams


class _Sink(io.TextIOBase):
    def __init__(self):
        self.lines = 0

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        return len(text)


def _reporter(c, programs, sink):
    """The agent's reporter, writing its lines as the agent does (StructuredLines into the
    handler setup_logging makes, JSON format) into `sink`."""
    handler = logging.StreamHandler(sink)
    handler.setFormatter(JsonFormatter())
    handler.pyipset_lines = True
    logger = logging.getLogger("pyipset")
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    r = attribution.BlockReporter(86, None, lambda: (programs, c.pods), Metrics(), threading.Event(),
                                  log_rate=1e9, emit=StructuredLines("pyipset.blocked").write)
    r._refresh()
    return r, (logger, saved)


@pytest.mark.benchmark(group="blocked connections: NFLOG datagrams to attributed log lines, one thread")
def test_attributed_events_per_second(benchmark, workload):
    c, programs, datagrams = workload
    sink = _Sink()
    reporter, (logger, saved) = _reporter(c, programs, sink)
    reporter.handle(datagrams[0])  # the native program is built on first use, not timed

    def run():
        reporter.decoder._next_seq = None  # the rounds replay the same sequence numbers
        for d in datagrams:
            reporter.handle(d)

    try:
        benchmark.pedantic(run, rounds=3, iterations=1)
    finally:
        logger.handlers[:], level, logger.propagate = saved
        logger.setLevel(level)
    assert sink.lines == QUEUE_THRESHOLD + 3 * EVENTS  # every event a line
    assert not reporter.decoder.errors and reporter.decoder.lost == 0
    # the median round, as every other target takes (the fastest would flatter it)
    benchmark.extra_info.update(events=EVENTS, events_per_s=EVENTS / benchmark.stats.stats.median)


@pytest.mark.benchmark(group="blocked connections: packet to log line in a lab node")
def test_packet_to_log_line_latency(benchmark, tmp_path):
    from pyipset.lab.node import LabNode
    from pyipset.model import load
    from pyipset.kernel.netns import in_netns

    c = load(["../examples/three-tier"])
    times: dict = {}

    class Stamp(logging.Handler):
        def emit(self, record):
            times.setdefault(record.src_port, time.perf_counter())

    with LabNode(c) as lab:
        src = next(lp for lp in lab.pods if lp.pod.key == "shop/data-0")
        dst = next(p for p in c.pods if p.key == "shop/middle-1")
        logger = logging.getLogger("pyipset.blocked")
        logger.handlers[:] = [Stamp()]
        logger.setLevel(logging.INFO)
        logger.propagate = False
        stop = threading.Event()
        programs = [compile_cluster(c, "inet")]
        reporter = attribution.BlockReporter(86, lab.node, lambda: (programs, c.pods), Metrics(), stop,
                                             log_rate=1e9).start()
        sent: dict = {}

        def probe():
            # 150 blocked SYNs (data may not reach middle on 8080), 20 ms apart: under the log's rate limit;
            # the round ends when each has become a log line (or 5 s after the last)
            for i in range(150):
                s = in_netns(src.netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                s.setblocking(False)
                s.bind((str(src.pod.ips[0]), 0))
                port = s.getsockname()[1]
                sent[port] = time.perf_counter()
                s.connect_ex((str(dst.ips[0]), 8080))
                time.sleep(0.02)
                s.close()
            end = time.monotonic() + 5
            while len(times) < len(sent) and time.monotonic() < end:
                time.sleep(0.05)
        try:
            assert reporter.bound.wait(10), reporter.error
            benchmark.pedantic(probe, rounds=1, iterations=1)
        finally:
            stop.set()
            reporter.thread.join(5)
            logger.handlers[:] = []
    latencies = sorted(times[p] - t for p, t in sent.items() if p in times)
    assert len(latencies) == len(sent), f"{len(sent) - len(latencies)} blocked SYNs never became a log line"
    p50, p99 = latencies[len(latencies) // 2], latencies[int(0.99 * (len(latencies) - 1))]
    benchmark.extra_info.update(p50_ms=1e3 * p50, p99_ms=1e3 * p99, max_ms=1e3 * latencies[-1],
                                samples=len(latencies))
