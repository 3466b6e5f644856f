"""The nftables rendering without a kernel: interval sets hold exactly the
addresses ipset's hash:net with nomatch matches, elements and rules are
rendered for every set type, match and target, and hostile text cannot leave
its quotes."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyipset.compile.program import TARGETS, Match, Rule, RuleProgram, SetDef
from pyipset.kernel import nftables
from setmodel import net_lookup


def _nets(version: int):
    bits = 32 if version == 4 else 128
    base = 0xC6120000 if version == 4 else 0x20010DB8 << 96  # 198.18.0.0, 2001:db8:: (aligned to /22)

    @st.composite
    def one(draw):
        length = draw(st.integers(bits - 10, bits))
        offset = draw(st.integers(0, (1 << 10) - 1)) >> (bits - length) << (bits - length)
        return ipaddress.ip_network((base + offset, length)), draw(st.booleans())
    return one()


@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from([4, 6]), data=st.data())
def test_intervals_match_what_hash_net_matches(version, data):
    """Every address near the nets (their edges and neighbours) is in a
    rendered interval exactly when the longest prefix holding it is not a
    nomatch entry (setmodel's plain reading of ipset's rule)."""
    entries = dict(data.draw(st.lists(_nets(version), min_size=1, max_size=12)))
    family = "inet" if version == 4 else "inet6"
    spans = nftables.intervals(family, [f"{n}{' nomatch' if nomatch else ''}" for n, nomatch in entries.items()])
    assert all(a[1] + 1 < b[0] for a, b in zip(spans, spans[1:]))  # sorted, disjoint, not adjacent
    probes = set()
    for net in entries:
        for edge in (int(net.network_address), int(net.broadcast_address)):
            probes.update({edge - 1, edge, edge + 1})
    for probe in probes:
        addr = ipaddress.ip_address(probe) if version == 4 else ipaddress.IPv6Address(probe)
        inside = any(lo <= probe <= hi for lo, hi in spans)
        assert inside == net_lookup(entries, addr), (str(addr), entries, spans)


def test_the_whole_address_space_and_an_exception():
    spans = nftables.intervals("inet", ["0.0.0.0/0", "10.0.0.0/8 nomatch", "10.1.0.0/16"])
    assert [nftables._range_text("inet", lo, hi) for lo, hi in spans] == [
        "0.0.0.0-9.255.255.255", "10.1.0.0-10.1.255.255", "11.0.0.0-255.255.255.255"]


@pytest.mark.parametrize("set_type,member,elem,json_elem", [
    ("hash:ip", "192.0.2.1", "192.0.2.1", "192.0.2.1"),
    ("hash:ip,port", "192.0.2.1,tcp:80", "192.0.2.1 . tcp . 80", {"concat": ["192.0.2.1", "tcp", 80]}),
    ("hash:ip,port,ip", "2001:db8::1,sctp:9,2001:db8::2", "2001:db8::1 . sctp . 9 . 2001:db8::2",
     {"concat": ["2001:db8::1", "sctp", 9, "2001:db8::2"]}),
])
def test_elements_go_out_and_come_back_as_ipset_prints_them(set_type, member, elem, json_elem):
    family = "inet6" if ":" in member.split(",")[0] else "inet"
    assert nftables.element(set_type, member) == elem
    assert nftables._element_text(family, set_type, json_elem) == member


HOSTILE = 'x" ; delete table inet pyipset ; comment "\n}'


def test_every_match_and_target_renders_and_text_stays_quoted():
    matches = [Match("set", name="pyi-a", dims=d) for d in ("src", "dst", "dst,dst", "src,dst,dst", "src,src,dst")]
    matches += [Match("set", name="pyi-a", dims="src", negate=True), Match("addr", name="192.0.2.0/24", dims="dst"),
                Match("proto", value=132), Match("dport", value=80, value2=90), Match("dport", value=53, value2=53),
                Match("mark", value=0x10000, value2=0xF0000), Match("state", states=("RELATED", "ESTABLISHED")),
                Match("limit", value=100, value2=200), Match("in", name="weave"), Match("out", name="weave"),
                Match("connmark", value=0x800000, value2=0x800000)]
    rules = [Rule((m,), "ACCEPT", origin=HOSTILE) for m in matches]
    for target in TARGETS:
        extra = {"JUMP": {"jump": "X"}, "GOTO": {"jump": "X"}, "MARK": {"mark": 0x20000},
                 "NFLOG": {"log_group": 86, "log_prefix": HOSTILE},
                 "SET": {"add_set": "pyi-r", "add_dims": "src,src,dst", "add_exist": True},
                 "DISPATCH": {"dispatch": "pyi-m", "dispatch_dims": "dst"}}.get(target, {})
        rules.append(Rule((Match("proto", value=6),) if target == "REJECT" else (), target, **extra))
    rules.append(Rule((), "MARK", mark=0, mark_mask=0xF0000))
    for rule in rules:
        text = nftables.render_rule("inet", rule)
        assert "\n" not in text and text.count('"') % 2 == 0 and "; delete" not in text.replace('_', ''), text
    assert "ip6 saddr . meta l4proto . th dport . ip6 daddr @pyi-a" in nftables.render_rule(
        "inet6", Rule((matches[3],), "ACCEPT"))
    assert nftables.render_rule("inet6", Rule((), "DISPATCH", dispatch="pyi-m", dispatch_dims="src")) == \
        "ip6 saddr vmap @pyi-m"
    for hostile in (Rule((Match("set", name="pyi-a; flush ruleset", dims="src"),), "ACCEPT"),
                    Rule((), "DISPATCH", dispatch="pyi-m; flush ruleset", dispatch_dims="src"),
                    Rule((), "SET", add_set="x", add_dims="src,src,dst"),
                    Rule((Match("proto", value=17),), "REJECT")):  # a TCP reset for UDP
        with pytest.raises(ValueError):
            nftables.render_rule("inet", hostile)


def test_a_program_renders_as_one_script_with_both_families_apart():
    sets = {"pyi-n": SetDef("pyi-n", "hash:net", "inet", ("192.0.2.0/24", "192.0.2.128/25 nomatch"), "k")}
    program = RuleProgram("inet", sets=sets, chains={"PYIPSET": [Rule((Match("set", name="pyi-n", dims="src"),),
                                                                         "DROP")]})
    text = nftables.render(program)
    assert "add set inet pyipset pyi-n { type ipv4_addr; flags interval; }" in text
    assert "{ 192.0.2.0-192.0.2.127 }" in text
    assert "add rule inet pyipset ip/PYIPSET ip saddr @pyi-n counter drop" in text
    with pytest.raises(ValueError):
        nftables.declare_set(SetDef("x; flush ruleset", "hash:ip", "inet", (), "k"))


@pytest.mark.parametrize("set_type,members", [
    ("hash:ip", ("192.0.2.1", "192.0.2.2")),
    ("hash:ip,port", ("192.0.2.1,tcp:80", "198.51.100.7,sctp:65535")),
    ("hash:ip,port,ip", ("192.0.2.1,udp:53,203.0.113.9",)),
])
def test_the_fast_rendering_of_a_sets_elements_is_the_plain_one(set_type, members):
    setdef = SetDef("pyi-x", set_type, "inet", members, "k")
    assert nftables.elements(setdef) == [nftables.element(set_type, m) for m in members]


def test_a_set_made_anew_rewrites_each_chain_using_it_once():
    """A set of our name but another type is deleted and made anew in the
    transaction: every chain that uses it (a match or an update) is written
    again after it, once, even when the plan writes that chain already."""
    from pyipset.kernel.plan import Plan, SetStep
    seen = SetDef("pyi-r", "hash:ip,port,ip", "inet", (), "k", timeout=60, maxelem=16)
    rules = [Rule((Match("set", name="pyi-r", dims="src,src,dst"),), "DROP"),
             Rule((), "SET", add_set="pyi-r", add_dims="src,src,dst")]
    program = RuleProgram("inet", sets={"pyi-r": seen}, chains={"A": rules, "B": [Rule((), "ACCEPT")]})
    text = nftables.transaction([Plan(program, sets=[SetStep("pyi-r", seen, "recreate")], chains=["A"])])
    assert text.count("flush chain inet pyipset ip/A\n") == 1 and "ip/B" not in text
    assert text.index("delete set inet pyipset pyi-r") < text.index("add set inet pyipset pyi-r")


def test_bulk_elements_are_laid_out_as_nf_tables_reads_them():
    """_core.nft_elements (the bulk path's layout, kernel/nfnetlink.py): per
    member NFTA_LIST_ELEM { NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE key } } with
    the key's fields in network order, each padded to 4 bytes — written out
    here by hand from the kernel's uapi (nf_tables.h), not by the encoder's
    own rules; and every member it cannot hold named."""
    import struct

    from pyipset import _core

    def element(key: bytes) -> bytes:
        n = len(key)
        return struct.pack("=HHHHHH", 12 + n, 0x8001, 8 + n, 0x8001, 4 + n, 1) + key

    v4 = bytes([198, 51, 100, 7])
    v6 = bytes.fromhex("20010db8000000000000000000000009")
    cases = [("hash:ip", "inet", "198.51.100.7", v4),
             ("hash:ip", "inet6", "2001:db8::9", v6),
             ("hash:ip,port", "inet", "198.51.100.7,tcp:8080", v4 + b"\x06\0\0\0" + b"\x1f\x90\0\0"),
             ("hash:ip,port", "inet6", "2001:db8::9,sctp:5", v6 + b"\x84\0\0\0" + b"\0\x05\0\0"),
             ("hash:ip,port,ip", "inet", "198.51.100.7,udp:53,192.0.2.1",
              v4 + b"\x11\0\0\0" + b"\0\x35\0\0" + bytes([192, 0, 2, 1]))]
    for kind, family, member, key in cases:
        assert _core.nft_elements(kind, family, [member, member]) == element(key) * 2, (kind, family)
    good = {"hash:ip": "198.51.100.1", "hash:ip,port": "198.51.100.1,tcp:1", "hash:net": "198.51.100.0/24"}
    for kind, family, member, why in [("hash:ip", "inet", "198.51.100.300", "198.51.100.300"),
                                      ("hash:ip", "inet", "2001:db8::1", "2001:db8::1"),
                                      ("hash:ip,port", "inet", "198.51.100.7,icmp:8/0", "ICMP"),
                                      ("hash:net", "inet", "198.51.100.0/24", "hash:net"),
                                      ("hash:ip", "bridge", "198.51.100.7", "bridge")]:
        with pytest.raises(ValueError, match=why):
            _core.nft_elements(kind, family, [good[kind], member])
    with pytest.raises(ValueError, match="not text"):
        _core.nft_elements("hash:ip", "inet", [b"198.51.100.1"])


def test_element_batches_carry_deletions_first_and_fit_every_attribute():
    """nfnetlink.batch (the path of updates of elements only): one batch, its
    deletions (NFT_MSG_DELSETELEM) before its additions (NFT_MSG_NEWSETELEM);
    verdict map elements carry NFTA_SET_ELEM_DATA { NFTA_DATA_VERDICT {
    code (NFT_GOTO, network order), chain } } — written out here by hand from
    nf_tables.h; and rows of any length are cut between rows so that no
    elements attribute passes its 16-bit length, nothing lost or repeated."""
    import struct

    from pyipset import _core
    from pyipset.kernel import nfnetlink

    key = _core.nft_elements("hash:ip", "inet", ["198.51.100.7"])
    chain = b"ip/PYIPSET-G-1\0"
    verdict = struct.pack("=HH", 8, 1) + struct.pack("!i", -4) + struct.pack("=HH", 4 + len(chain), 2) + chain
    verdict += b"\0" * (-len(verdict) % 4)
    data = struct.pack("=HH", 8 + len(verdict), 0x8002) + struct.pack("=HH", 4 + len(verdict), 0x8002) + verdict
    assert nfnetlink.verdict_rows(key, len(key), ["ip/PYIPSET-G-1"]) == \
        [struct.pack("=HH", len(key) + len(data), 0x8001) + key[4:] + data]

    addresses = [f"198.18.{i // 256}.{i % 256}" for i in range(6000)]
    keys = _core.nft_elements("hash:ip", "inet", addresses)
    rows = nfnetlink.verdict_rows(keys, len(keys) // len(addresses), [f"ip/PYIPSET-G-{i % 7}" for i in range(6000)])
    data, sent = nfnetlink.batch("pyipset", [("pyi-D-m", rows, 0), ("pyi-K-s", keys[:12 * 3000], 12)],
                                 deletes=[("pyi-K-s", keys[12 * 3000:], 12)])
    kinds, carried, offset = [], {"pyi-D-m": b"", "pyi-K-s": b""}, 0
    while offset < len(data):
        size, kind = struct.unpack_from("=IH", data, offset)
        kinds.append(kind)
        if kind >> 8 == 10:  # nf_tables: table, set, then the elements attribute, last
            at, name = offset + 20, None
            while at < offset + size:
                length, attr = struct.unpack_from("=HH", data, at)
                if attr & 0x7FFF == 2:
                    name = data[at + 4:at + length - 1].decode()
                if attr & 0x7FFF == 3:
                    assert length <= 0xFFFF
                    carried[name] += data[at + 4:at + length]
                at += (length + 3) & ~3
        offset += size
    assert kinds[0] == 16 and kinds[-1] == 17  # batch begin, end
    middle = [k & 0xFF for k in kinds[1:-1]]
    assert middle == sorted(middle, reverse=True) and set(middle) == {14, 12}  # deletions, then additions
    assert carried["pyi-D-m"] == b"".join(rows) and len(sent) == len(kinds) - 2
    assert carried["pyi-K-s"] == keys[12 * 3000:] + keys[:12 * 3000]
    assert sum(1 for k in middle if k == 12) > 2  # the map's rows needed more than one attribute
