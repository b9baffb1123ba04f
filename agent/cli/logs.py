"""Logging as `--log-format` and `--log-level` say (every command has them), and the JSON line format.

Why JSON: in a cluster the agent's stderr goes to a log pipeline (Loki, Elasticsearch, Cloud
Logging) that indexes fields, and a multi-line traceback in plain text arrives there as many
unrelated lines. One JSON object per line keeps each record, its level and its exception together.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

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


def configure_logging(log_format: str = "text", log_level: str = "info") -> None:
    """Root logging to stderr as the options say; the Kafka client's INFO chatter stays below WARNING."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(log_level.upper())
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
