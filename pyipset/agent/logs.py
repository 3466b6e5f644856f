"""The agent's logs: one line per record, text or JSON (objects named
namespace/name), for its own loggers and the libraries' warnings; and a
batch writer for the attributed block log's hot path."""

from __future__ import annotations

import json
import logging
import sys
import time

_ENCODE = json.JSONEncoder(default=str).encode  # one encoder, not one per line (json.dumps makes one per call)
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


class StructuredLines:
    """Writes many INFO records of one logger at once, each one line in the
    form the agent's handler gives every record (JsonFormatter's object, or
    the text format), under the handler's lock: the attributed block log's
    path, where logging's per-record machinery would cost more than
    everything else together. Falls back to the logging module when the
    logger's handler is not one setup_logging made."""

    def __init__(self, name: str):
        self.name = name
        self.logger = logging.getLogger(name)
        self._second = None
        self._stamp = ""

    def _handler(self):
        root = logging.getLogger("pyipset")
        if self.logger.handlers or not self.logger.propagate or len(root.handlers) != 1 \
                or not getattr(root.handlers[0], "pyipset_lines", False):
            return None
        return root.handlers[0]

    def write(self, items) -> None:
        """items: (message, fields) pairs; fields a dict, or its JSON members
        already encoded (a str: `"key": value, ...`, for the hottest callers)."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        handler = self._handler()
        if handler is None:
            for message, fields in items:
                self.logger.info(message, extra=json.loads("{" + fields + "}") if isinstance(fields, str) else fields)
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        if isinstance(handler.formatter, JsonFormatter):
            stamp = f"{self._stamp}.{int((now - second) * 1000):03d}Z"
            head = {"time": stamp, "level": "info", "logger": self.name}
            start = _ENCODE(head)[:-1] + ", \"message\": "
            text = "".join(start + _ENCODE(m) + ", " + f + "}\n" if isinstance(f, str) else
                           _ENCODE({**head, "message": m, **f}) + "\n" for m, f in items)
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)) + f",{int((now - second) * 1000):03d}"
            text = "".join(f"{stamp} INFO {self.name}: {m}\n" for m, _ in items)
        with handler.lock:
            handler.stream.write(text)
            handler.flush()


def setup_logging(settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.pyipset_lines = True  # StructuredLines may write for it
    root = logging.getLogger("pyipset")
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    root.propagate = False
    # The libraries' own records (the API client, urllib3) in the same form, warnings and up: one format
    # per line, never a plain-text line in a JSON log.
    everything = logging.getLogger()
    everything.handlers[:] = [handler]
    everything.setLevel(logging.WARNING)
