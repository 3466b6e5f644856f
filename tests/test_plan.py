"""Plans without a kernel: what a plan's steps become in the iptables
backend's `ipset restore` input when a set outgrows the bound the kernel fixed
when it was made (ipset's maxelem)."""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyipset.compile.program import RuleProgram, SetDef
from pyipset.kernel.handle import Kernel
from pyipset.kernel.iptables import fit, ipset_blocks
from pyipset.kernel.plan import Plan, SetStep
from pyipset.sets import capacity

FIRST = int(ipaddress.IPv4Address("198.18.0.0"))
NAME = "pyi-P-plantest"


def _addresses(lo: int, hi: int) -> list:
    return [str(ipaddress.IPv4Address(FIRST + i)) for i in range(lo, hi)]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=st.integers(60_000, 100_000), grow=st.integers(1, 40_000), drop=st.integers(0, 50),
       bound=st.sampled_from([0, 65_536, 80_000, 120_000, 200_000]), late=st.booleans())
def test_an_edit_past_the_bound_becomes_a_rebuild_that_holds_every_member(before, grow, drop, bound, late):
    """Whatever the set held and the bound the handle knows (0: none known,
    as an unlisted set reads): an edit that leaves the set within the bound
    stays an edit; one past it becomes a rebuild whose new set is made with
    room for every member, holding exactly the program's members — an
    isolation set's additions held back until after the chains."""
    after = _addresses(drop, before + grow)
    setdef = SetDef(NAME, "hash:ip", "inet", tuple(after), "k", role="isolated" if late else "peer")
    step = SetStep(NAME, setdef, "edit", gone=_addresses(0, drop), new=_addresses(before, before + grow), late=late)
    plan = Plan(RuleProgram("inet", sets={NAME: setdef}), sets=[step])
    kernel = Kernel()
    kernel.capacities[NAME] = bound
    fit(kernel, plan)
    (step,) = plan.sets
    fits = len(after) <= max(bound, capacity(0))
    assert step.action == ("edit" if fits else "rebuild")
    blocks, last = ipset_blocks(plan)
    lines = [line for block in blocks for line in block] + last.splitlines()
    if fits:
        return
    create = next(line.split() for line in lines if line.startswith("create "))
    assert int(create[create.index("maxelem") + 1]) >= len(after)
    made = {line.split()[2] for line in lines if line.startswith(f"add {NAME}-t ")}
    later = {line.split()[2] for line in last.splitlines()}
    assert made | later == set(after) and not made & later
    assert later == (set(step.new) if late else set())
    assert lines.index(f"swap {NAME}-t {NAME}") < min((lines.index(line) for line in last.splitlines()),
                                                       default=len(lines))
