"""Our sets against the kernel's: the save text round-trips through the
kernel's own ipset tool, and membership answers agree with `ipset test`."""

from __future__ import annotations

import ipaddress
import random

import numpy as np

from pyipset import IPSet


def kernel_roundtrip(netns, s: IPSet) -> IPSet:
    netns.run("ipset", "restore", input=s.save())
    return IPSet.restore(netns.run("ipset", "save", s.name).stdout)


def test_every_type_round_trips_through_the_kernel(netns):
    sets = [
        ("hash:ip", "inet", ["192.0.2.1", "255.255.255.255", "203.0.113.0"]),
        ("hash:ip", "inet6", ["::1", "2001:db8::1", "::ffff:192.0.2.1"]),
        ("hash:ip,port", "inet", ["192.0.2.1,tcp:0", "192.0.2.1,udp:65535", "192.0.2.2,sctp:80",
                                  "192.0.2.3,icmp:8/0", "192.0.2.3,icmp:7/3", "192.0.2.4,gre:0",
                                  "192.0.2.4,udplite:5"]),
        ("hash:ip,port", "inet6", ["2001:db8::1,tcp:443", "2001:db8::1,icmpv6:echo-reply"]),
        ("hash:ip,port,ip", "inet", ["192.0.2.1,tcp:80,198.51.100.2", "192.0.2.1,udp:53,198.51.100.3"]),
        ("hash:ip,port,ip", "inet6", ["2001:db8::1,sctp:9,2001:db8::2", "::,tcp:0,::"]),
        ("hash:net", "inet", ["192.0.2.0/24", "192.0.2.128/25 nomatch", "198.51.100.7", "10.0.0.0/1"]),
        ("hash:net", "inet6", ["2001:db8::/32", "2001:db8:1::/48 nomatch", "2001:db8::1"]),
    ]
    for i, (set_type, family, entries) in enumerate(sets):
        s = IPSet(set_type, family, name=f"rt{i}")
        for e in entries:
            text, _, flag = e.partition(" ")
            s.add(text, nomatch=flag == "nomatch")
        back = kernel_roundtrip(netns, s)
        assert back.save() == s.save(), set_type
        assert len(back) == len(entries)


def test_kernel_limits_our_core_goes_beyond(netns):
    """The kernel refuses 0.0.0.0 in hash:ip and /0 in hash:net; our core holds
    both, and the kernel renderer must therefore treat them specially."""
    netns.run("ipset", "create", "lim", "hash:ip")
    assert netns.run("ipset", "add", "lim", "0.0.0.0", check=False).returncode != 0
    netns.run("ipset", "create", "limnet", "hash:net")
    assert netns.run("ipset", "add", "limnet", "0.0.0.0/0", check=False).returncode != 0
    s = IPSet("hash:net")
    s.add("0.0.0.0/0")
    assert "192.0.2.1" in s


def test_hash_net_lookups_agree_with_the_kernel(netns):
    """Nested match and nomatch prefixes: every answer equals `ipset test`."""
    rng = random.Random(20261126)
    s = IPSet("hash:net", name="lpm")
    base = int(ipaddress.IPv4Address("198.18.0.0"))
    for _ in range(60):
        prefix = rng.choice([15, 16, 20, 24, 26, 28, 30, 31, 32])
        addr = ipaddress.IPv4Address(base + rng.randrange(1 << 17))
        net = ipaddress.IPv4Network(f"{addr}/{prefix}", strict=False)
        s.add(str(net), nomatch=rng.random() < 0.4)
    netns.run("ipset", "restore", input=s.save())
    queries = []
    for entry in s:
        net = ipaddress.IPv4Network(entry.split()[0])
        for v in (int(net.network_address) - 1, int(net.network_address), int(net.broadcast_address),
                  int(net.broadcast_address) + 1):
            queries.append(ipaddress.IPv4Address(v))
    queries = sorted(set(queries))
    batch = s.contains_many(np.array([int(q) for q in queries], dtype=np.uint32)).tolist()
    kernel = []
    for q in queries:
        r = netns.run("ipset", "test", "lpm", str(q), check=False)
        kernel.append(r.returncode == 0)
    assert batch == kernel
    assert [str(q) in s for q in queries] == kernel
    assert any(kernel) and not all(kernel)


def test_create_options_are_checked_as_the_real_ipset_checks_them(netns):
    """The table tests/test_save_restore.py holds our restore to is what the
    kernel's own tool says (ENOMEM aside: no value in the table asks for it)."""
    from setmodel import CREATE_OPTIONS
    wrong = []
    for options, accepted in CREATE_OPTIONS:
        answer = netns.run("ipset", "create", "opt", "hash:ip", *options.split(), check=False)
        netns.run("ipset", "destroy", "opt", check=False)
        if (answer.returncode == 0) != accepted:
            wrong.append((options, answer.returncode, answer.stderr.strip()))
    assert not wrong
