"""One JSON logging setup for the long-running processes (the worker, the producer, the local
Lambda runner): stdlib ``logging``, one JSON object per line.

Modules log with ``logging.getLogger(__name__)`` and put their data in ``extra``::

    logger.info("chunk applied", extra={"chunk_key": key, "rows_good": 9_998})

and each process's ``__main__`` calls ``configure`` once. A line holds ``timestamp`` (UTC),
``level``, ``logger``, ``message``, every ``extra`` field, and for ``logger.exception`` the
``exception`` (the traceback) and ``exception_name``. The Lambda keeps Powertools' Logger,
whose lines have the same ``level`` / ``message`` / extra-field shape.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON, with its ``extra`` fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
            line["exception_name"] = record.exc_info[0].__name__ if record.exc_info[0] else ""
        elif record.exc_text:
            line["exception"] = record.exc_text
        # default=str: datetimes, paths and the like are logged as their text, never dropped.
        return json.dumps(line, default=str)


def configure(*loggers: str, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Send every record to ``stream`` (stderr) as JSON: ``loggers`` (the process's own
    packages) from ``level`` up, everything else (py4j, botocore, ...) from WARNING up.

    Calling it again replaces the handler it installed, so tests can call ``main`` twice.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.set_name(__name__)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == __name__]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in loggers:
        logging.getLogger(name).setLevel(level)
