"""`pyipset agent`: settings, logging, signals, and the loop."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time

from .settings import from_args

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message, and the record's
    extra fields (object as namespace/name, resource, reason, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) +
               f".{int(record.msecs):03d}Z", "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("pyipset")
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    root.propagate = False


def run(args) -> int:
    from .loop import Agent
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
