"""pyipset: Kubernetes NetworkPolicy enforcement on ipsets, with a native
hash-set core that has the kernel's ipset semantics."""

__all__ = ["IPSet", "SET_TYPES", "FAMILIES"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Loaded on first use, so that `import pyipset` stays cheap: the command
    # line installs its signal handling before anything heavy is imported.
    if name in __all__:
        from . import sets
        return getattr(sets, name)
    raise AttributeError(f"module 'pyipset' has no attribute {name!r}")
