"""pyipset: Kubernetes NetworkPolicy enforcement on ipsets, with a native
hash-set core that has the kernel's ipset semantics."""

from .sets import FAMILIES, SET_TYPES, IPSet

__all__ = ["IPSet", "SET_TYPES", "FAMILIES"]
__version__ = "0.1.0"
