"""Kafka client security settings: one model, read by the agent's settings and by the Kafka connectors.

It lives apart from `connectors.kafka` so that reading settings never imports kafka-python.
Values are kafka-python's parameter names and values, passed through unchanged, so SASL/TLS
clusters need no code change. The password is a `SecretStr`: it prints as `**********`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class KafkaSecurity(BaseModel):
    """How the agent authenticates to and encrypts its traffic with the brokers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="transport: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"] | None = Field(
        None, description="needed with SASL_*: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, GSSAPI or OAUTHBEARER"
    )
    sasl_plain_username: str | None = Field(None, description="SASL user name")
    sasl_plain_password: SecretStr | None = Field(None, description="SASL password (environment or file only)")
    ssl_cafile: Path | None = Field(None, description="CA bundle that signed the brokers' certificates")
    ssl_certfile: Path | None = Field(None, description="client certificate for mutual TLS")
    ssl_keyfile: Path | None = Field(None, description="client private key for mutual TLS")

    @model_validator(mode="after")
    def _sasl_needs_a_mechanism(self) -> KafkaSecurity:
        if self.security_protocol.startswith("SASL_") and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
        return self

    def client_config(self) -> dict[str, Any]:
        """The settings that are set, as kafka-python keyword arguments (secrets unwrapped)."""
        config: dict[str, Any] = {}
        for name, value in self:
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, Path):
                value = str(value)
            config[name] = value
        return config
