"""Python's cyclic garbage collector, paused while a large structure is built.

Loading a cluster, compiling its programs and loading a program into the
evaluator each make hundreds of thousands to millions of small objects
(dicts, tuples, dataclasses) that hold no reference cycles. Every so many
allocations the collector walks the objects of a generation, and a full
collection every object the process holds, so in a process holding a large
cluster the walks grow with what is built: measured on the 10k-pod, 1,000
policy benchmark cluster, loading it took 0.45-0.64 s paused against 0.95-1.05 s
not, and loading a program into the evaluator 25 ms against up to 170 ms.

Pausing defers collections, it loses none: what the build made unreachable
in cycles (an exception's traceback, say) is collected once the collector
runs again. A pause inside a pause leaves the outer one to resume it."""

from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def paused():
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
