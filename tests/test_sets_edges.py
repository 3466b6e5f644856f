"""Edge cases, bad input and the batch contract of pyipset.IPSet."""

from __future__ import annotations

import ipaddress
import threading

import numpy as np
import pytest

from pyipset import IPSet


def v4(*ips):
    return np.array([int(ipaddress.IPv4Address(x)) for x in ips], dtype=np.uint32)


def v6(*ips):
    return np.frombuffer(b"".join(ipaddress.IPv6Address(x).packed for x in ips), dtype=np.uint8).reshape(-1, 16)


# ---- extremes ----

def test_extreme_addresses_and_ports():
    s = IPSet("hash:ip,port")
    for e in ("0.0.0.0,tcp:0", "255.255.255.255,udp:65535", "0.0.0.0,sctp:65535"):
        assert s.add(e)
    assert "0.0.0.0,tcp:0" in s and "0.0.0.0,udp:0" not in s
    assert s.contains_many(v4("0.0.0.0", "255.255.255.255", "255.255.255.255"),
                           np.array([6, 17, 6], np.uint8),
                           np.array([0, 65535, 65535], np.uint16)).tolist() == [True, True, False]
    s6 = IPSet("hash:ip", "inet6")
    assert s6.add("::") and s6.add("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
    assert s6.contains_many(v6("::", "::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")).tolist() == [True, False, True]
    assert sorted(s6) == ["::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]


def test_zero_address_is_an_ordinary_member():
    s = IPSet("hash:ip")
    assert "0.0.0.0" not in s
    assert s.contains_many(v4("0.0.0.0")).tolist() == [False]
    s.add("0.0.0.0")
    assert "0.0.0.0" in s and len(s) == 1 and list(s) == ["0.0.0.0"]
    assert s.contains_many(v4("0.0.0.0", "0.0.0.1")).tolist() == [True, False]
    assert s.discard("0.0.0.0") and not s.discard("0.0.0.0") and len(s) == 0


def test_prefix_extremes():
    s = IPSet("hash:net")
    s.add("0.0.0.0/0")
    s.add("192.0.2.1/32", nomatch=True)
    assert list(sorted(s)) == ["0.0.0.0/0", "192.0.2.1 nomatch"]
    assert "203.0.113.9" in s and "192.0.2.1" not in s and "192.0.2.1/32" not in s
    assert "0.0.0.0/0" in s and "255.255.255.255" in s
    s6 = IPSet("hash:net", "inet6")
    s6.add("::/0")
    s6.add("2001:db8::1/128", nomatch=True)
    assert "2001:db8::2" in s6 and "2001:db8::1" not in s6
    assert s6.contains_many(v6("::", "2001:db8::1")).tolist() == [True, False]


def test_nested_nomatch_inside_match_inside_nomatch():
    s = IPSet("hash:net")
    s.add("10.0.0.0/8", nomatch=True)          # outer: excluded
    s.add("10.1.0.0/16")                       # inside it: included
    s.add("10.1.1.0/24", nomatch=True)         # inside that: excluded again
    s.add("10.1.1.128/25")                     # and included again
    cases = {"10.0.0.1": False, "10.1.0.1": True, "10.1.1.1": False, "10.1.1.200": True,
             "10.1.2.0": True, "10.2.0.0": False, "11.0.0.0": False}
    for addr, want in cases.items():
        assert (addr in s) is want, addr
    assert s.contains_many(v4(*cases)).tolist() == list(cases.values())


def test_host_bits_are_cleared_like_the_kernel():
    s = IPSet("hash:net")
    s.add("192.0.2.77/24")
    assert list(s) == ["192.0.2.0/24"]
    assert "192.0.2.0/24" in s and "192.0.2.200/24" in s


def test_readding_a_network_updates_nomatch():
    s = IPSet("hash:net")
    assert s.add("198.51.100.0/24")
    assert "198.51.100.1" in s
    assert not s.add("198.51.100.0/24", nomatch=True)
    assert "198.51.100.1" not in s and list(s) == ["198.51.100.0/24 nomatch"]
    assert s.discard("198.51.100.0/24") and len(s) == 0


def test_duplicates_and_absent_deletes():
    s = IPSet("hash:ip,port,ip")
    e = "192.0.2.1,tcp:80,198.51.100.2"
    assert s.add(e) and not s.add(e) and len(s) == 1
    assert not s.discard("192.0.2.1,tcp:81,198.51.100.2") and len(s) == 1
    with pytest.raises(KeyError):
        s.remove("192.0.2.9,tcp:80,198.51.100.2")
    cols = (v4("192.0.2.1", "192.0.2.1"), np.array([6, 6], np.uint8), np.array([80, 80], np.uint16),
            v4("198.51.100.2", "198.51.100.2"))
    assert s.add_many(*cols) == 0
    assert s.discard_many(*cols) == 1 and len(s) == 0


def test_entries_accept_ipaddress_objects():
    s = IPSet("hash:ip")
    s.add(ipaddress.IPv4Address("192.0.2.1"))
    assert ipaddress.IPv4Address("192.0.2.1") in s
    n = IPSet("hash:net")
    n.add(ipaddress.IPv4Network("192.0.2.0/24"))
    assert "192.0.2.9" in n


def test_millions_of_members():
    n = 2_000_000
    rng = np.random.default_rng(7)
    keys = rng.choice(1 << 32, size=2 * n, replace=False).astype(np.uint32)
    s = IPSet("hash:ip")
    assert s.add_many(keys[:n]) == n
    assert len(s) == n
    hits = s.contains_many(keys)
    assert hits[:n].all() and not hits[n:].any()
    # memory stays within 2.5 slots of 4 bytes per member, plus a header
    assert s.memory_bytes <= 10 * n + 4096
    assert s.discard_many(keys[: n // 2]) == n // 2
    assert len(s) == n - n // 2
    hits = s.contains_many(keys[:n])
    assert not hits[: n // 2].any() and hits[n // 2:].all()
    # a million string lookups agree with the batch answer on a sample
    sample = keys[n // 2 - 50: n // 2 + 50]
    assert [str(ipaddress.IPv4Address(int(k))) in s for k in sample] == s.contains_many(sample).tolist()


def test_churn_does_not_grow_memory():
    """Deletion leaves no tombstones: a set that churns keeps its size."""
    s = IPSet("hash:ip")
    rng = np.random.default_rng(3)
    batch = rng.choice(1 << 32, size=50_000, replace=False).astype(np.uint32)
    s.add_many(batch)
    steady = s.memory_bytes
    for _ in range(40):
        new = rng.choice(1 << 32, size=50_000, replace=False).astype(np.uint32)
        s.discard_many(batch)
        s.add_many(new)
        batch = new
        assert len(s) == len(np.unique(batch))
    assert s.memory_bytes <= steady * 2
    assert s.contains_many(batch).all()


# ---- bad input ----

@pytest.mark.parametrize("set_type,family,entry,message", [
    ("hash:ip", "inet", "192.0.2.300", "'192.0.2.300' is not an IPv4 address"),
    ("hash:ip", "inet", "2001:db8::1", "IPv6 address but the set is family inet"),
    ("hash:ip", "inet6", "192.0.2.1", "IPv4 address but the set is family inet6"),
    ("hash:ip", "inet", "192.0.2.0/24", "is a network"),
    ("hash:ip,port", "inet", "192.0.2.1,tcp:99999", "'99999' is not a number 0-65535"),
    ("hash:ip,port", "inet", "192.0.2.1,tcp:80-81", "port range"),
    ("hash:ip,port", "inet", "192.0.2.1,xyz:80", "unknown protocol 'xyz'"),
    ("hash:ip,port", "inet", "192.0.2.1", "expected IP,proto:port"),
    ("hash:ip,port,ip", "inet", "192.0.2.1,tcp:80", "expected IP,proto:port,IP"),
    ("hash:net", "inet", "192.0.2.0/40", "prefix length '40'"),
    ("hash:net", "inet", "192.0.2.0/24 sometimes", "only 'nomatch' may follow"),
])
def test_malformed_entries_name_the_value(set_type, family, entry, message):
    s = IPSet(set_type, family)
    with pytest.raises(ValueError) as info:
        s.add(entry)
    assert message in str(info.value)
    assert repr(entry) in str(info.value)
    # a malformed entry is simply not a member
    assert entry not in s


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="unknown set type 'hash:mac'"):
        IPSet("hash:mac")
    with pytest.raises(ValueError, match="unknown family 'ipv4'"):
        IPSet("hash:ip", "ipv4")


def test_wrong_entry_type():
    s = IPSet("hash:ip")
    with pytest.raises(TypeError, match="must be a str"):
        s.add(3232235777)
    with pytest.raises(TypeError, match="must be a str"):
        3232235777 in s


def test_batch_dtype_shape_and_length_errors():
    s = IPSet("hash:ip,port")
    ip, proto, port = v4("192.0.2.1"), np.array([6], np.uint8), np.array([80], np.uint16)
    with pytest.raises(TypeError, match="dtype uint32, not int64"):
        s.contains_many(ip.astype(np.int64), proto, port)
    with pytest.raises(TypeError, match="must be a numpy.ndarray of uint16.*not list"):
        s.contains_many(ip, proto, [80])
    with pytest.raises(ValueError, match="2 rows but the first column has 1"):
        s.contains_many(ip, np.array([6, 6], np.uint8), port)
    with pytest.raises(TypeError, match=r"takes 3 array\(s\) \(ip, proto, port\), got 1"):
        s.contains_many(ip)
    with pytest.raises(ValueError, match="C-contiguous"):
        s.contains_many(v4("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4")[::2],
                        np.array([6, 6], np.uint8), np.array([80, 80], np.uint16))
    with pytest.raises(TypeError, match="dtype uint32, not >u4"):
        s.contains_many(ip.astype(">u4"), proto, port)
    s6 = IPSet("hash:ip", "inet6")
    with pytest.raises(TypeError, match="dtype uint8"):
        s6.contains_many(v4("192.0.2.1"))
    with pytest.raises(ValueError, match=r"shape \(N, 16\)"):
        s6.contains_many(np.zeros((3, 4), np.uint8))


def test_bad_batch_row_changes_nothing():
    s = IPSet("hash:ip,port")
    ip = v4("192.0.2.1", "192.0.2.2", "192.0.2.3")
    with pytest.raises(ValueError, match="row 2 is invalid: protocol 0 is not valid.*nothing was changed"):
        s.add_many(ip, np.array([6, 17, 0], np.uint8), np.array([1, 2, 3], np.uint16))
    assert len(s) == 0
    with pytest.raises(ValueError, match="row 1 is invalid: protocol 47 has no ports"):
        s.add_many(ip, np.array([6, 47, 6], np.uint8), np.array([1, 2, 3], np.uint16))
    n = IPSet("hash:net")
    with pytest.raises(ValueError, match="row 0 is invalid: prefix length 33 is longer than 32"):
        n.add_many(v4("192.0.2.0"), cidr=np.array([33], np.uint8))
    with pytest.raises(ValueError, match="nomatch is only valid in hash:net"):
        s.add_many(ip[:1], np.array([6], np.uint8), np.array([1], np.uint16), nomatch=True)
    with pytest.raises(TypeError, match="cidr= is only for hash:net"):
        s.add_many(ip[:1], np.array([6], np.uint8), np.array([1], np.uint16), cidr=np.array([8], np.uint8))


def test_batch_results_do_not_copy_inputs():
    s = IPSet("hash:ip")
    ip = v4("192.0.2.1", "192.0.2.2")
    s.add_many(ip)
    ip[0] = int(ipaddress.IPv4Address("198.51.100.1"))  # the caller's array is untouched by the set
    assert "192.0.2.1" in s and "198.51.100.1" not in s
    out = s.contains_many(ip)
    assert out.dtype == np.bool_ and out.tolist() == [False, True]


# ---- iteration and threads ----

def test_changing_the_set_during_iteration_raises():
    s = IPSet("hash:ip")
    s.add_many(v4("192.0.2.1", "192.0.2.2", "192.0.2.3"))
    it = iter(s)
    next(it)
    s.add("192.0.2.4")
    with pytest.raises(RuntimeError, match="changed during iteration"):
        next(it)


def test_batch_calls_release_the_gil():
    """While one thread runs a long contains_many, another keeps running Python."""
    s = IPSet("hash:ip")
    rng = np.random.default_rng(5)
    s.add_many(rng.choice(1 << 32, size=1_000_000, replace=False).astype(np.uint32))
    queries = rng.integers(0, 1 << 32, size=30_000_000, dtype=np.uint32)
    started = threading.Event()
    result = {}

    def worker():
        started.set()
        result["hits"] = s.contains_many(queries)

    t = threading.Thread(target=worker)
    t.start()
    started.wait()
    spins = 0
    while t.is_alive():
        spins += 1
    t.join()
    assert result["hits"].shape == (30_000_000,)
    # Holding the GIL for the whole call would leave this thread a handful of
    # switch intervals at most; released, it spins freely all along.
    assert spins > 10_000


def test_concurrent_readers_agree():
    s = IPSet("hash:net")
    for i in range(200):
        s.add(f"198.18.{i}.0/24", nomatch=(i % 3 == 0))
    s.add("198.18.0.0/15")
    q = np.arange(int(ipaddress.IPv4Address("198.18.0.0")), int(ipaddress.IPv4Address("198.20.0.0")),
                  dtype=np.uint32)
    want = s.contains_many(q)
    results = []
    threads = [threading.Thread(target=lambda: results.append(s.contains_many(q))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all((r == want).all() for r in results)
    assert int(want.sum()) == (1 << 17) - 67 * 256
