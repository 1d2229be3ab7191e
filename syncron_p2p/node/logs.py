"""Logging for the node: readable lines by default, JSON lines for machines."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"{stamp} {level}{record.getMessage()}"


def setup_logging(*, verbose: int = 0, as_json: bool = False) -> None:
    """Configure the ``syncron`` loggers (stderr). ``-v``: debug."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else PlainFormatter())
    root = logging.getLogger("syncron")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    # watchdog warns about its own shutdown races; nothing a user can act on
    logging.getLogger("watchdog").setLevel(logging.ERROR)
    inotify = logging.getLogger("watchdog.observers.inotify")
    if not any(isinstance(f, _ShutdownRace) for f in inotify.filters):
        inotify.addFilter(_ShutdownRace())
    if verbose > 1:
        logging.getLogger("zeroconf").setLevel(logging.DEBUG)
        logging.getLogger("zeroconf").addHandler(handler)


class _ShutdownRace(logging.Filter):
    """Drops the error watchdog logs when an event arrives as its observer
    stops (the node stopping): a race inside watchdog, not a fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()
