"""`pyipset agent`: settings, logging, signals, and the loop."""

from __future__ import annotations

import logging
import signal

from .logs import setup_logging
from .loop import Agent
from .settings import from_args


def run(args) -> int:
    settings = from_args(args)
    setup_logging(settings)
    agent = Agent(settings)

    def stop(signum, frame):
        logging.getLogger("pyipset.agent").info("%s: stopping; the kernel keeps its rules (`pyipset cleanup` "
                                                "removes them)", signal.Signals(signum).name)
        agent.shutdown()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        agent.start()
        agent.run()
    finally:
        agent.shutdown()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
