"""pyipset.IPSet: the native set, plus the `ipset save` / `ipset restore` text
format for moving one set to and from the kernel's own tooling."""

from __future__ import annotations

import re

import numpy as np

from . import _core
from .errors import brief

__all__ = ["IPSet", "SET_TYPES", "FAMILIES"]

SET_TYPES = ("hash:ip", "hash:ip,port", "hash:ip,port,ip", "hash:net")
FAMILIES = ("inet", "inet6")

# The kernel's IPSET_MAXNAMELEN is 32 bytes with the terminating NUL.
_NAME_MAX = 31
_NAME_RE = re.compile(r"[^\s\"']{1,%d}\Z" % _NAME_MAX)

def packed_column(addresses, version: int) -> np.ndarray:
    """Packed addresses (4 or 16 bytes each, network order) as the column the
    batch methods (add_many, contains_many, the evaluator) take: uint32 in
    host order for IPv4, rows of 16 bytes for IPv6."""
    if version == 4:
        return np.frombuffer(b"".join(addresses), dtype=">u4").astype(np.uint32)
    return np.frombuffer(b"".join(addresses), dtype=np.uint8).reshape(-1, 16).copy()


def capacity(size: int) -> int:
    """The most members a kernel set made for `size` members may hold (its
    maxelem): room to double in place, at least the kernel's default, 65536.
    The kernel fixes it when the set is made: an `add` past it fails."""
    return max(65536, 2 * size)


def creation_options(size: int) -> str:
    """The one sizing rule for a kernel set of `size` members: hashsize the
    smallest power of two from 1024 with at most 4 members per bucket, and
    maxelem its capacity()."""
    hashsize = 1024
    while hashsize * 4 < size:
        hashsize *= 2
    return f"hashsize {hashsize} maxelem {capacity(size)}"


# Create-line options that only tune the kernel's table: accepted, not needed here.
# Their values are checked as ipset 7.17 checks them (strtoul, base 0: decimal, 0x hex, 0 octal), each
# given at most once: name -> largest value.
_TUNING_OPTIONS = {"hashsize": 0xFFFFFFFF, "maxelem": 0xFFFFFFFF, "bucketsize": 0xFF, "initval": 0xFFFFFFFF}
_NUMBER = re.compile(r"\+?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\Z")
# Options that would add per-entry data or change membership: refused.
_UNSUPPORTED_OPTIONS = {"timeout", "counters", "comment", "skbinfo", "forceadd", "netmask", "markmask"}


# A word of `ipset save` text: a double-quoted string (ipset quotes comments
# that way) or a run of non-blank characters. One regex pass: linear in the
# line, where shlex.split was quadratic (28 s for one 1.6 MB line).
_WORD = re.compile(r'"([^"]*)"|(\S+)')


def _split(line: str, lineno: int) -> list:
    if line.count('"') % 2:
        raise ValueError(f"line {lineno}: unbalanced double quote in {brief(line)}")
    return [quoted if plain == "" else plain for quoted, plain in _WORD.findall(line)]


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid set name {brief(name)}: 1-{_NAME_MAX} characters without spaces or quotes"
        )
    return name


class IPSet(_core.IPSet):
    """A set of one kernel ipset type and family.

    >>> s = IPSet("hash:ip,port")
    >>> s.add("192.0.2.1,tcp:80")
    True
    >>> "192.0.2.1,tcp:80" in s, "192.0.2.1,udp:80" in s
    (True, False)

    Batch calls take one numpy array per key column: IPv4 addresses as uint32
    in host order (``int(ipaddress.IPv4Address(x))``), IPv6 addresses as an
    (N, 16) uint8 array in network order (``IPv6Address(x).packed``),
    protocols as uint8 IP protocol numbers, ports as uint16.
    """

    def __init__(self, type: str, family: str = "inet", *, seed: int = 0, name: str | None = None):
        super().__init__(type, family, seed=seed)
        self.name = None if name is None else _check_name(name)

    def __repr__(self) -> str:
        named = f", name={self.name!r}" if self.name else ""
        return f"IPSet({self.type!r}, {self.family!r}{named}) with {len(self)} entries"

    def remove(self, entry) -> None:
        """Removes an entry; KeyError if it is not in the set."""
        if not self.discard(entry):
            raise KeyError(entry)

    def update(self, entries) -> int:
        """Adds every entry of an iterable of strings; returns how many were new."""
        return sum(1 for e in entries if self.add(e))

    def save(self, name: str | None = None) -> str:
        """The set as `ipset save` prints it: a create line, then one add line per
        entry. Entries are sorted (the kernel prints them in hash order), so equal
        sets save to identical text."""
        name = _check_name(name or self.name or "pyipset")
        lines = [f"create {name} {self.type} family {self.family} {creation_options(len(self))}"]
        lines.extend(f"add {name} {entry}" for entry in sorted(self))
        return "\n".join(lines) + "\n"

    @classmethod
    def restore(cls, text: str, *, seed: int = 0) -> "IPSet":
        """Reads one set from `ipset save` output. Errors name the line."""
        created: IPSet | None = None
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            words = _split(line, lineno)
            verb = words[0]
            if verb == "create":
                if created is not None:
                    raise ValueError(f"line {lineno}: a second set; restore reads one set at a time")
                created = cls._from_create_line(words, lineno, seed)
            elif verb == "add":
                if created is None:
                    raise ValueError(f"line {lineno}: 'add' before any 'create' line")
                if len(words) < 3:
                    raise ValueError(f"line {lineno}: expected 'add NAME ENTRY', got {brief(line)}")
                if words[1] != created.name:
                    raise ValueError(
                        f"line {lineno}: adds to set {brief(words[1])} but the set created is {created.name!r}"
                    )
                entry, flags = words[2], words[3:]
                nomatch = False
                if flags == ["nomatch"]:
                    nomatch = True
                elif flags:
                    raise ValueError(
                        f"line {lineno}: entry options {brief(' '.join(flags))} are not supported (only 'nomatch')"
                    )
                try:
                    created.add(entry, nomatch=nomatch)
                except ValueError as exc:
                    raise ValueError(f"line {lineno}: {exc}") from None
            else:
                raise ValueError(f"line {lineno}: unknown command {brief(verb)} (expected create or add)")
        if created is None:
            raise ValueError("no 'create' line: not ipset save output")
        return created

    @classmethod
    def _from_create_line(cls, words: list[str], lineno: int, seed: int) -> "IPSet":
        if len(words) < 3:
            raise ValueError(f"line {lineno}: expected 'create NAME TYPE [options]'")
        name, set_type, opts = words[1], words[2], words[3:]
        if set_type not in SET_TYPES:
            raise ValueError(f"line {lineno}: set type {brief(set_type)} is not supported (expected one of {', '.join(SET_TYPES)})")
        family = "inet"
        given: set = set()
        i = 0
        while i < len(opts):
            opt = opts[i]
            if opt in _UNSUPPORTED_OPTIONS:
                raise ValueError(f"line {lineno}: set option {brief(opt)} is not supported")
            if opt != "family" and opt not in _TUNING_OPTIONS:
                raise ValueError(f"line {lineno}: unknown set option {brief(opt)}")
            if i + 1 >= len(opts):
                raise ValueError(f"line {lineno}: set option {opt} needs a value")
            if opt in given:
                raise ValueError(f"line {lineno}: set option {opt} is given twice")
            given.add(opt)
            value = opts[i + 1]
            if opt == "family":
                family = value
                if family not in FAMILIES:
                    raise ValueError(f"line {lineno}: family {brief(family)} is not supported (expected inet or inet6)")
            else:
                _check_number(value, _TUNING_OPTIONS[opt], f"line {lineno}: {opt}")
            i += 2
        try:
            return cls(set_type, family, seed=seed, name=name)
        except ValueError as exc:
            raise ValueError(f"line {lineno}: {exc}") from None


def _check_number(text: str, largest: int, what: str) -> int:
    """A create-line number as ipset reads it (strtoul, base 0), 0..largest."""
    if text.startswith(("-", "+-")):
        raise ValueError(f"{what} {brief(text)} is out of range 0-{largest}")
    match = _NUMBER.match(text)
    if not match:
        raise ValueError(f"{what} {brief(text)} is not a number")
    digits = match.group(1)
    value = int(digits, 16) if digits[:2] in ("0x", "0X") else int(digits, 8) if digits[0] == "0" else int(digits)
    if value > largest:
        raise ValueError(f"{what} {brief(text)} is out of range 0-{largest}")
    return value


_core._use_fast_contains(IPSet)
