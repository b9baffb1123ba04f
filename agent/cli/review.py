"""`dknn-agent review`: the reviewer's web console over the quarantine topic (docs/design.md §5.5).

The Helm chart codes against these flag names; renaming one breaks the chart. Kafka's TLS/SASL
settings are the agent's own (`KafkaSecurity`), with the same flags and the same `DKNN_KAFKA_SECURITY__*`
environment variables, so one Secret serves the agent and its console; the SASL password, as for
the agent, is read from the environment only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.cli.flags import Arg, Command, SettingFlags
from agent.runtime.settings import TOPIC_PATTERN
from connectors.kafka_security import KafkaSecurity


class ConsoleKafka(BaseSettings):
    """The Kafka security settings, from flags and `DKNN_KAFKA_SECURITY__*` (flags win)."""

    model_config = SettingsConfigDict(
        env_prefix="DKNN_", env_nested_delimiter="__", env_ignore_empty=True, frozen=True, extra="ignore"
    )

    kafka_security: KafkaSecurity = Field(default_factory=KafkaSecurity)


class ReviewCommand(Command):
    """Serve the reviewer's web console. It reads the quarantine topic (and the reviews topic) with a consumer
    group of its own into a SQLite index, lists quarantined events newest first with filters, shows each one
    (its input rendered by kind, every class's p-value, each layer's neighbours with the bundle's exemplars) and
    publishes a reviewer's verdict as a dknn.review.v1 record, keyed by event id, to the reviews topic, which
    `dknn-agent extend` reads. /healthz, /readyz and /metrics need no log-in and show nothing of any event.

    Credentials come from files: --auth-file (user:password lines, HTTP basic auth; the user is the review's
    reviewer) and/or --token-file (one bearer token; browsers log in with it through a form). A --host other
    than a loopback address needs one of them, or --insecure-no-auth.
    """

    command_name: ClassVar[str] = "review"
    summary: ClassVar[str] = "the reviewer's web console: quarantined events, their evidence, verdicts"
    examples: ClassVar[tuple[str, ...]] = (
        "dknn-agent review --artifacts bundle/ --bootstrap-servers localhost:9092 "
        "--quarantine-topic inference-quarantine --reviews-topic inference-reviews",
        "dknn-agent review --artifacts bundle/ --bootstrap-servers kafka:9092 --quarantine-topic inference-quarantine "
        "--reviews-topic inference-reviews --host 0.0.0.0 --auth-file /etc/console/users --database /data/console.db",
    )

    artifacts: Path = Field(description="the bundle the agent serves (its inputs, classes and exemplars)")
    bootstrap_servers: Annotated[str, Arg(metavar="HOST:PORT")] = Field(description="Kafka brokers, host:port[,...]")
    quarantine_topic: Annotated[str, Arg(metavar="TOPIC")] = Field(
        pattern=TOPIC_PATTERN, description="the agent's quarantine topic"
    )
    reviews_topic: Annotated[str, Arg(metavar="TOPIC")] = Field(
        pattern=TOPIC_PATTERN, description="where verdicts go as dknn.review.v1 records (also read back)"
    )
    group: str = Field(
        "dknn-review-console", min_length=1, max_length=255, description="consumer group (default: dknn-review-console)"
    )
    host: str = Field("127.0.0.1", min_length=1, description="address to listen on (default: 127.0.0.1)")
    port: int = Field(8080, ge=0, le=65535, description="port to listen on; 0 picks a free one (default: 8080)")
    auth_file: Annotated[Path | None, Arg(metavar="FILE")] = Field(
        None, description="user:password lines for HTTP basic auth; the user is recorded as the reviewer"
    )
    token_file: Annotated[Path | None, Arg(metavar="FILE")] = Field(
        None, description="a file holding one bearer token (at least 16 characters); browsers log in with it"
    )
    insecure_no_auth: bool = Field(False, description="serve a non-loopback --host without any credentials")
    database: Annotated[Path | None, Arg(metavar="FILE")] = Field(
        None,
        description="the SQLite index, kept across restarts (default: a temporary file, rebuilt from the topics at "
        "every start)",
    )
    max_events: int = Field(
        1_000_000, ge=1, le=100_000_000, description="quarantined events kept; the oldest go first (default: 1000000)"
    )
    kafka: Annotated[dict[str, Any], SettingFlags(ConsoleKafka, "DKNN_")] = Field(
        {}, description="Kafka security settings given as flags"
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, text: str) -> str:
        if not re.fullmatch(r"[^,\s]+:\d+(,[^,\s]+:\d+)*", text):
            raise ValueError(f"expected HOST:PORT[,HOST:PORT], got {text!r}")
        return text

    @model_validator(mode="after")
    def _exposed_needs_credentials(self) -> ReviewCommand:
        """Checked on the command line, before any file is read: `load_credentials` then refuses a
        given file that holds no credential, so what passes here is never served without them."""
        from agent.console.auth import check_exposure

        check_exposure(self.host, self.auth_file is not None or self.token_file is not None, self.insecure_no_auth)
        return self

    def run(self) -> int:
        from agent.console.auth import load_credentials
        from agent.console.server import ConsoleOptions, run_console

        credentials = load_credentials(self.auth_file, self.token_file)
        security = settings_from(self.kafka).kafka_security
        return run_console(
            ConsoleOptions(
                artifacts=self.artifacts,
                bootstrap_servers=self.bootstrap_servers,
                quarantine_topic=self.quarantine_topic,
                reviews_topic=self.reviews_topic,
                group=self.group,
                host=self.host,
                port=self.port,
                credentials=credentials,
                database=self.database,
                max_events=self.max_events,
                security=security,
            )
        )


def settings_from(flags: dict[str, Any]) -> ConsoleKafka:
    """The Kafka settings, flags over the environment; a ConfigError names what is wrong."""
    from pydantic import ValidationError

    from agent.cli.flags import describe_error
    from agent.errors import ConfigError

    try:
        return ConsoleKafka(**flags)
    except ValidationError as exc:
        raise ConfigError(describe_error(exc, ConsoleKafka)) from None
