"""The `ipset save` text format, read and written."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyipset import IPSet
from setmodel import CREATE_OPTIONS


def test_save_format():
    s = IPSet("hash:ip,port", name="web")
    s.add("192.0.2.1,tcp:80")
    s.add("192.0.2.1,icmp:8/0")
    text = s.save()
    lines = text.splitlines()
    assert lines[0] == "create web hash:ip,port family inet hashsize 1024 maxelem 65536"
    assert sorted(lines[1:]) == ["add web 192.0.2.1,icmp:echo-request", "add web 192.0.2.1,tcp:80"]


def test_restore_reads_kernel_output():
    # Verbatim from `ipset save` (ipset v7.17), bucketsize and initval included.
    text = """create n hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x944faab3
add n 192.0.2.0/25 nomatch
add n 192.0.2.7
add n 198.51.100.0/24 nomatch
add n 192.0.2.0/24
"""
    s = IPSet.restore(text)
    assert s.name == "n" and s.type == "hash:net" and len(s) == 4
    assert "192.0.2.200" in s and "192.0.2.1" not in s and "192.0.2.7" in s
    assert IPSet.restore(s.save()).save() == s.save()


def test_restore_inet6_and_icmp_names():
    text = ("create i6 hash:ip,port,ip family inet6 hashsize 1024 maxelem 65536\n"
            "add i6 2001:db8::1,ipv6-icmp:echo-request,2001:db8::2\n"
            "add i6 ::ffff:192.0.2.1,tcp:1,::\n")
    s = IPSet.restore(text)
    assert "2001:db8::1,icmpv6:128/0,2001:db8::2" in s
    assert sorted(s.save().splitlines()[1:]) == sorted(text.splitlines()[1:])


@pytest.mark.parametrize("text,message", [
    ("add x 192.0.2.1\n", "line 1: 'add' before any 'create' line"),
    ("create x hash:mac\n", "line 1: set type 'hash:mac' is not supported"),
    ("create x hash:ip family inet timeout 60\n", "line 1: set option 'timeout' is not supported"),
    ("create x hash:ip\nadd y 192.0.2.1\n", "line 2: adds to set 'y' but the set created is 'x'"),
    ("create x hash:ip\nadd x 192.0.2.999\n", "line 2: invalid hash:ip entry '192.0.2.999'"),
    ("create x hash:ip\ncreate y hash:ip\n", "line 2: a second set"),
    ("create x hash:ip\nadd x 192.0.2.1 comment \"hi\"\n", "line 2: entry options 'comment hi' are not supported"),
    ("create x hash:ip\nflush x\n", "line 2: unknown command 'flush'"),
    ("", "no 'create' line"),
    ("create this-name-is-much-too-long-for-the-kernel hash:ip\n", "invalid set name"),
])
def test_restore_errors_name_the_line(text, message):
    with pytest.raises(ValueError) as info:
        IPSet.restore(text)
    assert message in str(info.value)


@pytest.mark.parametrize("options,accepted", CREATE_OPTIONS)
def test_create_options_are_checked_as_ipset_checks_them(options, accepted):
    text = f"create x hash:ip {options}"
    if accepted:
        assert IPSet.restore(text).type == "hash:ip"
    else:
        with pytest.raises(ValueError, match="line 1"):
            IPSet.restore(text)


_WORDS = ["create", "add", "del", "x", "y", "hash:ip", "hash:net", "hash:ip,port", "hash:ip,port,ip", "family",
          "inet", "inet6", "hashsize", "maxelem", "bucketsize", "initval", "timeout", "1024", "0x10", "-1", "08",
          "192.0.2.1", "192.0.2.0/24", "2001:db8::1", "192.0.2.1,tcp:80", "192.0.2.1,udp:53,198.51.100.1",
          "nomatch", "0.0.0.0/0", "", '"q"', "65536", "banana"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_WORDS), max_size=8).map(" ".join), max_size=6), st.text(max_size=40))
def test_restore_fuzzed_text_is_refused_by_line_or_round_trips(lines, noise):
    """Random lines of restore input (the grammar's words in any order) and
    random text: a ValueError naming a line, or a set whose save() restores
    to itself; never another exception."""
    for text in ("\n".join(lines), noise, "create x hash:ip\n" + noise):
        try:
            s = IPSet.restore(text)
        except ValueError as exc:
            assert str(exc).startswith(("line ", "no 'create' line")), str(exc)
            continue
        assert IPSet.restore(s.save()).save() == s.save()
