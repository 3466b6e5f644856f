"""collector.py: the cyclic collector paused while a structure is built, and
(kept) what a long-running process keeps moved out of its walks, with a
sweep that still frees cycles that froze as garbage."""

from __future__ import annotations

import gc
import weakref

import pytest

from pyipset import collector


class Node:
    pass


@pytest.fixture(autouse=True)
def thawed():
    yield
    gc.unfreeze()
    gc.enable()


def _in_generations(obj) -> bool:
    return any(o is obj for g in range(3) for o in gc.get_objects(generation=g))


def test_kept_pauses_then_freezes_what_it_built():
    """Inside, no collection runs; after it, the collector runs again and what was built is in no
    generation it walks (frozen), yet freed by reference counting when its last reference goes."""
    with collector.kept():
        assert not gc.isenabled()
        built = [Node() for _ in range(100)]
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0 and gc.is_tracked(built) and not _in_generations(built)
    gone = weakref.ref(built[0])
    del built
    assert gone() is None


def test_kept_inside_a_pause_leaves_it_paused_and_freezes_nothing():
    with collector.paused():
        with collector.kept():
            made = [Node()]
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    assert gc.isenabled() and _in_generations(made)


def test_a_cycle_that_froze_as_garbage_is_freed_by_the_sweep():
    """A cycle left garbage inside kept() survives ordinary collections (frozen) and goes at sweep()."""
    with collector.kept():
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
    gc.collect()
    assert gone() is not None  # frozen: no collection walks it
    collector.sweep()
    assert gone() is None and gc.get_freeze_count() > 0  # what lives is frozen again
