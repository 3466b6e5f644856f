"""`python -m pyipset` and the `pyipset` console command.

Ctrl-C or SIGTERM while the modules are still being imported ends the
command as cleanly as later (130/143, no trace): nothing has been done yet."""

import os
import signal
import sys


def _early_signal(signum, frame):
    print("pyipset: interrupted" if signum == signal.SIGINT else "pyipset: terminated", file=sys.stderr)
    sys.exit(128 + signum)


def main() -> int:
    previous = {s: signal.signal(s, _early_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    from . import cli
    for s, handler in previous.items():
        signal.signal(s, handler)
    code = cli.main()
    for s in previous:  # done: a signal now would only hide the real exit code
        signal.signal(s, signal.SIG_IGN)
    if cli.ended in cli.ENDS_AT_ONCE:
        # Nothing to release: the output flushed, the process ends without freeing what it built.
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:  # the reader went away
            code = code or 1
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
