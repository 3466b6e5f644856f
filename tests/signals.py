"""Child processes that receive signals as a command started from a terminal
would: a shell starts a background job (`cmd &`, as a CI runner may run the
suite) with SIGINT ignored, the child inherits that, and Python then never
raises KeyboardInterrupt, rightly. Tests that send SIGINT start their child
with preexec_fn=terminal_signals."""

import signal


def terminal_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
