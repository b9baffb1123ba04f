"""`--log-format` and `--log-level` for the long-running commands, and the JSON line format.

Why JSON: in a cluster the agent's stderr goes to a log pipeline (Loki, Elasticsearch, Cloud
Logging) that indexes fields, and a multi-line traceback in plain text arrives there as many
unrelated lines. One JSON object per line keeps each record, its level and its exception together.
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import UTC, datetime

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLines(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, and the exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logging")
    group.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text lines, or one JSON object per line (default: text)",
    )
    group.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info", help="least severe level logged (default: info)"
    )


def configure_logging(args: argparse.Namespace) -> None:
    """Root logging to stderr as the options say; the Kafka client's INFO chatter stays below WARNING."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonLines() if getattr(args, "log_format", "text") == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(args, "log_level", "info").upper())
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
