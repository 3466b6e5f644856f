"""`python -m pyipset` and the `pyipset` console command.

Ctrl-C or SIGTERM while the modules are still being imported ends the
command as cleanly as later (130/143, no trace): nothing has been done yet."""

import signal
import sys


def _early_signal(signum, frame):
    print("pyipset: interrupted" if signum == signal.SIGINT else "pyipset: terminated", file=sys.stderr)
    sys.exit(128 + signum)


def main() -> int:
    previous = {s: signal.signal(s, _early_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    from .cli import main as cli_main
    for s, handler in previous.items():
        signal.signal(s, handler)
    code = cli_main()
    for s in previous:  # done: a signal now would only hide the real exit code
        signal.signal(s, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    sys.exit(main())
