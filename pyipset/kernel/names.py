"""Every name that reaches the kernel's text interfaces (`ipset restore`,
`iptables-restore`), checked against what the kernel accepts before anything
is changed. A name is one word of a line those tools split on blanks: a
newline or a quote in it would start a command of its own (an interface name
`br0 -j X\\n-F INPUT` once flushed a foreign chain), so every name is held to
a character set that cannot do that, and to the kernel's length limits.
Comments and log prefixes are free text: render.py quotes them."""

from __future__ import annotations

import re

from ..errors import UsageError, brief

SET_PREFIX = "pyi-"
CHAIN_PREFIX = "PYIPSET"

IFNAMSIZ = 16  # include/uapi/linux/if.h: names are at most 15 bytes
MAX_SET_NAME = 31  # IPSET_MAXNAMELEN - 1
MAX_CHAIN_NAME = 28  # XT_EXTENSION_MAXNAMELEN - 1 - 1 for iptables user chains

# The kernel (dev_valid_name) refuses '/', ':', blanks, "." and ".."; iptables
# reads a trailing '+' as "any interface with this prefix". We accept the
# characters real interfaces use (cni0, weave, eth0.100, cali_x-1, br+).
_INTERFACE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,14}\+?\Z|\+\Z")  # no leading '-': an option
_SET_NAME = re.compile(r"[A-Za-z0-9_.:][A-Za-z0-9_.:-]{0,%d}\Z" % (MAX_SET_NAME - 1))
_CHAIN_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,%d}\Z" % (MAX_CHAIN_NAME - 1))
_NETNS = re.compile(r"[A-Za-z0-9_.-]{1,200}\Z")


class InvalidName(UsageError):
    """A name the kernel would refuse or misread."""


def interface(name: str, what: str = "interface name") -> str:
    if not isinstance(name, str) or not _INTERFACE.match(name) or name in (".", ".."):
        raise InvalidName(f"invalid {what} {brief(name)}: at most {IFNAMSIZ - 1} characters of letters, digits, "
                          "'_', '.', '-', not starting with '-' (a trailing '+' matches a prefix)")
    return name


def set_name(name: str) -> str:
    if not isinstance(name, str) or not _SET_NAME.match(name):
        raise InvalidName(f"invalid set name {brief(name)}: at most {MAX_SET_NAME} characters of letters, digits, "
                          "'_', '.', ':', '-'")
    return name


def chain_name(name: str) -> str:
    if not isinstance(name, str) or not _CHAIN_NAME.match(name):
        raise InvalidName(f"invalid chain name {brief(name)}: at most {MAX_CHAIN_NAME} characters of letters, "
                          "digits, '_', '.', '-'")
    return name


def netns(name: str) -> str:
    if not isinstance(name, str) or not _NETNS.match(name) or name in (".", ".."):
        raise InvalidName(f"invalid network namespace name {brief(name)}")
    return name
