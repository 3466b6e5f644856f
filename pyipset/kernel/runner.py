"""One way to run the kernel's tools (ip, ipset, iptables-restore, ...) for the
backend, the scratch namespaces and the lab: text in and out, a time limit,
and a typed error that names the command, the input line the tool refused
and what it said (bounded), instead of a traceback."""

from __future__ import annotations

import re
import subprocess
from typing import Optional

from ..errors import PyipsetError, brief_text

TOOL_TIMEOUT = 300  # seconds one tool may take (a 1M-member restore takes ~5)


class ToolError(PyipsetError):
    """A kernel tool failed: which one, at which input line, what it said."""

    def __init__(self, command: list, stderr: str, line: Optional[str] = None):
        self.command, self.stderr, self.line = command, stderr.strip(), line
        where = f" at line {brief_text(line)!r}" if line else ""
        super().__init__(f"{' '.join(command)} failed{where}: {brief_text(self.stderr)}")


def failing_line(stderr: str, script: Optional[str]) -> Optional[str]:
    """The input line a restore tool names in its error ("Error in line N" / "line N failed")."""
    m = re.search(r"[Ll]ine:? (\d+)", stderr)
    if not m or not script:
        return None
    lines = script.splitlines()
    n = int(m.group(1))
    return lines[n - 1] if 0 < n <= len(lines) else None


def run(cmd: list, input: Optional[str] = None, check: bool = True, timeout: float = TOOL_TIMEOUT,
        netns: Optional[str] = None, error: type = ToolError) -> subprocess.CompletedProcess:
    """Runs cmd (inside the named network namespace when given); `error`
    (a ToolError subclass) when it cannot start, times out, or fails and
    check is set. The error names cmd as given, without the netns prefix."""
    full = (["ip", "netns", "exec", netns] if netns else []) + list(cmd)
    try:
        r = subprocess.run(full, input=input, text=True, capture_output=True, timeout=timeout, cwd="/")
    except FileNotFoundError:
        raise error(list(cmd), f"{full[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise error(list(cmd), f"did not finish within {timeout:g} s") from None
    if check and r.returncode != 0:
        raise error(list(cmd), r.stderr, failing_line(r.stderr, input))
    return r
