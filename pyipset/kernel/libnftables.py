"""A thin binding of libnftables (the C library behind `nft`; Debian
`libnftables1`), by ctypes: one context per network namespace, commands in
nft's own language, one atomic transaction per call, JSON out.

A context opens its netlink socket in the network namespace of the thread
that makes it; the socket stays there. So a context for a named namespace is
made on a short-lived thread that first enters it (setns(2) moves only the
calling thread), and is then used from any thread: no process per command.
A context is not safe for two threads at once: each has its own lock."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Optional

from ..errors import PyipsetError
from .netns import in_netns

OUTPUT_HANDLE = 1 << 3
OUTPUT_JSON = 1 << 4
OUTPUT_TERSE = 1 << 11  # listings without set elements
INPUT_NO_DNS = 1 << 0  # nft_ctx_input_set_flags, libnftables >= 1.0.7: never resolve a name


class Unavailable(PyipsetError):
    """libnftables cannot be loaded here."""


_lib = None
_load_lock = threading.Lock()


def library():
    """The loaded library (Unavailable: it is not installed)."""
    global _lib
    with _load_lock:
        if _lib is None:
            path = ctypes.util.find_library("nftables") or "libnftables.so.1"
            try:
                lib = ctypes.CDLL(path, use_errno=True)
            except OSError as exc:
                raise Unavailable(f"libnftables cannot be loaded ({exc}); Debian: apt-get install libnftables1") \
                    from None
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
                getattr(lib, name).argtypes = [ctypes.c_void_p]
            for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
                getattr(lib, name).restype = ctypes.c_char_p
                getattr(lib, name).argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
            if hasattr(lib, "nft_ctx_input_set_flags"):
                lib.nft_ctx_input_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            _lib = lib
        return _lib


class NftError(PyipsetError):
    """libnftables refused a command: what it said, and the input line it named."""

    def __init__(self, message: str, line: Optional[str]):
        self.message, self.line = message, line
        super().__init__(message)


class Context:
    """One libnftables context, bound to one network namespace (None: ours)."""

    def __init__(self, netns: Optional[str] = None):
        lib = library()
        ctx = in_netns(netns, lambda: lib.nft_ctx_new(0))
        if not ctx:
            raise Unavailable("libnftables could not make a context")
        self._ctx = ctx
        self._lib = lib
        self._lock = threading.Lock()
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        if hasattr(lib, "nft_ctx_input_set_flags"):
            lib.nft_ctx_input_set_flags(self._ctx, INPUT_NO_DNS)

    def run(self, commands: str, json: bool = False, dry_run: bool = False, terse: bool = False) -> str:
        """Runs `commands` (nft's language) as one transaction; its output (JSON
        text with json; listings without set elements with terse). NftError
        when refused: nothing of it was applied."""
        with self._lock:
            if self._ctx is None:
                raise Unavailable("the libnftables context is closed")
            lib = self._lib
            lib.nft_ctx_output_set_flags(self._ctx, (OUTPUT_JSON | OUTPUT_HANDLE if json else 0)
                                         | (OUTPUT_TERSE if terse else 0))
            lib.nft_ctx_set_dry_run(self._ctx, dry_run)
            try:
                rc = lib.nft_run_cmd_from_buffer(self._ctx, commands.encode())
                out = (lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
                err = (lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
            finally:
                lib.nft_ctx_set_dry_run(self._ctx, False)
            if rc != 0:
                lines = err.strip().splitlines()
                message = lines[0] if lines else "refused (no message)"
                line = lines[1] if len(lines) > 1 else None
                raise NftError(message, line)
            return out

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
