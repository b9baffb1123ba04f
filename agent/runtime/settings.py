"""The agent's one settings model: CLI flags > `DKNN_*` environment > YAML file > defaults.

Why one frozen model: every knob is named, typed, unit-suffixed (`max_batch_wait_s`) and
validated once at start-up, so a typo or a bad value fails the process before it consumes a
single event, with a one-line `ConfigError` naming the field, instead of surfacing mid-stream.
Settings hold *references* (paths, topic names); the loaders that open them run at start-up.

Sources and precedence (highest first):

1. `overrides`: the CLI's parsed flags. `None` means "flag not given" and is dropped, so an
   absent flag never masks the environment or the file.
2. environment: `DKNN_<FIELD>`, a section's fields nested with `__`: `DKNN_METRICS__PORT=9108`,
   `DKNN_KAFKA_SECURITY__SASL_MECHANISM=PLAIN`. Empty variables count as unset (Helm charts like
   to render `value: ""`).
3. the YAML file given with `--config`: a mapping of field names, a section as a mapping of its
   own (`metrics: {port: 9108}`); `-` is accepted for `_` (`bootstrap-servers:` like the flag).
   Unknown keys are errors, not silently ignored.
4. the defaults below.

Sections merge key by key across sources (a YAML `kafka_security.security_protocol` and an
environment `..._SASL_MECHANISM` combine). Secrets are `SecretStr`: they print as `**********`
and `masked_dump` is what gets logged.

The agent knows only its own variables: every `DKNN_*` variable that is not one of its settings is
refused (`strict`, the default) or logged and ignored, because a misspelt one (`DKNN_TRESHOLD`)
would otherwise do nothing. The project's scripts and tests have knobs of the same prefix (where
MNIST is, which broker the tests use, the local broker's heap); keeping them from the agent is the
job of whatever starts it with them set, which leaves them out of its environment (`env -u` in
deploy/local/demo.sh, `tests/support/environment.py`), so the product lists none of them.

The `metrics` settings were flat before they became a section (`metrics_port`, DKNN_METRICS_PORT).
Those names are still read, onto the section, each with a one-line warning, so that no deployment
breaks on an upgrade: a flat variable ranks below the section's own (DKNN_METRICS__PORT), above
the file; a flat YAML key beside the same key in `metrics:` is refused as ambiguous.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from agent.engine.drift import DEFAULT_ARL_EVENTS, DEFAULT_WINDOW
from agent.engine.index import IndexBackend
from agent.engine.model_factory import DEFAULT_FACTORY_MODULES
from agent.errors import ConfigError
from agent.runtime.events import DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_ROWS
from agent.runtime.routing import DEFAULT_THRESHOLD
from connectors.base import OffsetReset
from connectors.kafka_security import KafkaSecurity
from connectors.kafka_tuning import KafkaTuning
from connectors.registry import split_uri

log = logging.getLogger(__name__)
TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"  # Kafka's legal topic names
_yaml_layer: ContextVar[dict[str, Any] | None] = ContextVar("dknn_yaml_layer", default=None)
UnknownModelPolicy = Literal["dead_letter", "skip"]  # what becomes of an event for another model


class _YamlLayer(PydanticBaseSettingsSource):
    """The already-read YAML mapping of the `load_settings` call in progress (empty otherwise)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_yaml_layer.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_layer.get() or {})


class MetricsSettings(BaseModel):
    """The HTTP endpoint: /metrics for Prometheus, /healthz and /readyz for the kubelet (docs/security.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("0.0.0.0", description="address /metrics, /healthz and /readyz bind to")
    port: int = Field(9108, ge=0, le=65535, description="port of /metrics, /healthz, /readyz; 0 = any free port")
    tls_certfile: Path | None = Field(None, description="serve /metrics over TLS with this certificate (PEM)")
    tls_keyfile: Path | None = Field(None, description="private key of metrics.tls_certfile (PEM)")
    basic_auth_username: str | None = Field(
        None, min_length=1, max_length=256, description="require HTTP basic auth on /metrics (probes stay open)"
    )
    basic_auth_password: SecretStr | None = Field(None, description="password for metrics.basic_auth_username")
    max_connections: int = Field(16, ge=1, le=1024, description="requests served at once; more are closed")
    timeout_s: float = Field(5.0, gt=0.0, le=300.0, description="a connection's time to send and receive")

    @model_validator(mode="after")
    def _pairs(self) -> MetricsSettings:
        if (self.basic_auth_username is None) != (self.basic_auth_password is None):
            raise ValueError("basic_auth_username and basic_auth_password go together")
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together")
        return self


# The flat names these settings had before their section (`metrics_port`, DKNN_METRICS_PORT), read
# onto it with a warning so that a deployment written for them still starts: flat name -> field.
MOVED_TO_METRICS = {f"metrics_{name}": name for name in MetricsSettings.model_fields}


class _MovedVariables(PydanticBaseSettingsSource):
    """DKNN_METRICS_PORT and the other flat variables of `MOVED_TO_METRICS`, onto `metrics`; below the
    environment proper, so DKNN_METRICS__PORT wins where both are set."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the environment whole

    def __call__(self) -> dict[str, Any]:
        moved: dict[str, Any] = {}
        for variable, value in os.environ.items():
            name = variable.upper().removeprefix("DKNN_").lower()
            if variable.upper().startswith("DKNN_") and name in MOVED_TO_METRICS and value:
                field = MOVED_TO_METRICS[name]
                log.warning("%s is deprecated: set DKNN_METRICS__%s instead", variable, field.upper())
                moved[field] = value
        return {"metrics": moved} if moved else {}


class AgentSettings(BaseSettings):
    """Everything `dknn-agent run` can be told; see the module docstring for where values come from."""

    model_config = SettingsConfigDict(
        env_prefix="DKNN_", env_nested_delimiter="__", env_ignore_empty=True, frozen=True, extra="forbid"
    )

    artifacts: Path = Field(description="bundle directory (written by `dknn-agent fit` or `train-reference`)")
    bundle_digest: str | None = Field(
        None,
        pattern=r"^sha256:[0-9a-f]{64}$",
        description="refuse the bundle unless its digest is this (`dknn-agent info` prints it)",
    )
    trusted_factories: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_FACTORY_MODULES,
        description="comma-separated modules whose model factories a bundle may name (docs/security.md)",
    )
    bootstrap_servers: str | None = Field(
        None, description="Kafka brokers, host:port[,host:port]; needed unless both source and sink are files"
    )
    input_topic: str = Field(
        "inference-events",
        pattern=TOPIC_PATTERN,
        description="topic of inference events: dknn.inference.v1, Open Inference Protocol v2 or KServe v1 bodies, "
        "plain or as CloudEvents (KServe's payload logger); one topic may carry several forms",
    )
    quarantine_topic: str = Field(
        "inference-quarantine", pattern=TOPIC_PATTERN, description="where low-credibility events go for review"
    )
    dead_letter_topic: str = Field(
        "inference-dead-letter", pattern=TOPIC_PATTERN, description="where malformed events go, bytes untouched"
    )
    scores_topic: str | None = Field(
        None, pattern=TOPIC_PATTERN, description="optional: a compact score record for every valid event"
    )
    group_id: str = Field(
        "dknn-agent",
        min_length=1,
        max_length=255,
        description="consumer group; replicas in one group share the partitions",
    )
    model_names: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="comma-separated names an event may give for this agent's model besides the bundle's own "
        "(e.g. the KServe InferenceService name)",
    )
    unknown_model: UnknownModelPolicy = Field(
        "dead_letter",
        description="an event for another model: dead_letter it, or skip and count it (a topic shared by models)",
    )
    max_inputs_per_event: int = Field(
        DEFAULT_MAX_ROWS,
        ge=1,
        le=100_000,
        description="most inputs one batch request (OIP v2, KServe v1 instances) may carry; more are dead-lettered",
    )
    create_topics: int = Field(
        0,
        ge=0,
        le=1000,
        description="create missing input and output topics at start with this many partitions (0: never; for "
        "local brokers and trials: production topics are the operator's, with their replication and retention)",
    )
    auto_offset_reset: OffsetReset = Field(
        "earliest",
        description="where a consumer group without committed offsets starts: earliest = the oldest "
        "retained event (the backlog is scored), latest = only events produced after it joins",
    )
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="the HTTP endpoint")
    threshold: float = Field(
        DEFAULT_THRESHOLD,
        gt=0.0,
        lt=1.0,
        description="quarantine below this credibility; flags about this share of clean traffic",
    )
    batch_size: int = Field(
        256, ge=1, le=100_000, description="most events per micro-batch (one forward pass); a poll takes what is there"
    )
    max_batch_wait_s: float = Field(0.2, ge=0.0, le=60.0, description="longest wait to fill a micro-batch")
    max_event_bytes: int = Field(
        DEFAULT_MAX_EVENT_BYTES, ge=64, le=64 * 1_048_576, description="larger events are dead-lettered unparsed"
    )
    max_output_bytes: int = Field(
        1_000_000,
        ge=4096,
        le=64 * 1_048_576,
        description="quarantine records larger than this leave out the event's input "
        "(keep it below the producer's and topics' message size limits)",
    )
    flush_timeout_s: float = Field(30.0, gt=0.0, le=600.0, description="longest wait for the sink to confirm a batch")
    retry_budget_s: float = Field(
        120.0, ge=0.0, le=3600.0, description="how long a retriable broker fault may last before the agent exits"
    )
    index: IndexBackend = Field("annoy", description="neighbour backend; exact brute-forces the same bundle")
    search_k: int | None = Field(None, ge=-1, description="Annoy nodes inspected per query; unset = the bundle's")
    drift_arl_events: float = Field(
        DEFAULT_ARL_EVENTS,
        gt=1.0,
        le=1e15,
        allow_inf_nan=False,
        description="mean events between false change alarms on unshifted traffic (at least; "
        "8.64e7 = one a day at 1,000 events/s)",
    )
    drift_window_events: int = Field(
        DEFAULT_WINDOW,
        ge=10,
        le=1_000_000,
        description="window of the shifted-state signal: low-credibility share of the last N events",
    )
    source: str | None = Field(
        None,
        description="input connector URI instead of Kafka at bootstrap_servers: file:PATH (JSONL) or kafka://HOST:PORT",
    )
    sink: str | None = Field(
        None, description="output connector URI: file:DIR (one JSONL file per topic) or kafka://HOST:PORT"
    )
    kafka_security: KafkaSecurity = Field(default_factory=KafkaSecurity, description="TLS / SASL for Kafka")
    kafka_tuning: KafkaTuning = Field(
        default_factory=KafkaTuning, description="further Kafka client settings; none that delivery rests on"
    )

    @field_validator("trusted_factories", "model_names", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("trusted_factories")
    @classmethod
    def _module_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for module in value:
            if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", module):
                raise ValueError(f"{module!r} is not a module name")
        return value

    @field_validator("model_names")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not 1 <= len(name) <= 128:
                raise ValueError(f"model name {name[:40]!r} must have 1 to 128 characters")
        return value

    @field_validator("source", "sink")
    @classmethod
    def _connector_uri(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                split_uri(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _kafka_needs_servers(self) -> AgentSettings:
        if self.bootstrap_servers is None and (self.source is None or self.sink is None):
            raise ValueError("bootstrap_servers is required unless both source and sink are given as URIs")
        outputs = {self.quarantine_topic, self.dead_letter_topic, self.scores_topic} - {None}
        if self.input_topic in outputs:
            raise ValueError(
                f"input_topic {self.input_topic!r} is also an output topic: the agent would consume "
                "its own outputs for ever"
            )
        if self.source and self.sink and self.source.startswith("file:") and self.sink.startswith("file:"):
            source, sink_dir = Path(self.source[5:]).resolve(), Path(self.sink[5:]).resolve()
            if source.parent == sink_dir and source.stem in outputs:
                raise ValueError(
                    f"source {self.source} is the sink's own {source.name}: the agent would read "
                    "its own outputs for ever"
                )
        return self

    @property
    def source_uri(self) -> str:
        """Where events come from: `source`, else the Kafka cluster at `bootstrap_servers`."""
        return self.source or f"kafka://{self.bootstrap_servers}"

    @property
    def sink_uri(self) -> str:
        """Where outputs go: `sink`, else the Kafka cluster at `bootstrap_servers`."""
        return self.sink or f"kafka://{self.bootstrap_servers}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # no .env, no secrets dir
        return (init_settings, env_settings, _MovedVariables(settings_cls), _YamlLayer(settings_cls))


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = _drop_none(value)
        if value is not None and value != {}:
            out[key] = value
    return out


def _section(field: FieldInfo) -> type[BaseModel] | None:
    """The model of a settings section (`kafka_security`, `metrics`); None for a plain setting."""
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _check_keys(data: dict[str, Any], model: type[BaseModel], where: str, prefix: str = "") -> dict[str, Any]:
    """Normalises `-` to `_` and refuses unknown keys, naming the file and the key."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        field = model.model_fields.get(name)
        if field is None:
            raise ConfigError(f"{where}: unknown setting {prefix}{key!s}")
        section = _section(field)
        if section is not None and isinstance(value, dict):
            value = _check_keys(value, section, where, prefix=f"{prefix}{name}.")
        out[name] = value
    return out


def _move_flat_keys(data: dict[str, Any], where: str) -> dict[str, Any]:
    """`metrics_port: 9108` becomes `metrics: {port: 9108}`, with a warning (`MOVED_TO_METRICS`)."""
    out: dict[str, Any] = {}
    moved: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in MOVED_TO_METRICS:
            out[key] = value
            continue
        field = MOVED_TO_METRICS[name]
        log.warning("%s: %s is deprecated: write it as metrics: {%s: ...}", where, key, field)
        moved[field] = value
    if moved:
        section = out.setdefault("metrics", {})
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: metrics must be a mapping of settings")
        both = sorted(set(moved) & {str(key).replace("-", "_") for key in section})
        if both:
            raise ConfigError(f"{where}: metrics_{both[0]} and metrics.{both[0]} both given; keep metrics.{both[0]}")
        out["metrics"] = {**section, **moved}
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return _check_keys(_move_flat_keys(data, str(path)), AgentSettings, str(path))


def _one_line(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    field = ".".join(str(part) for part in first["loc"]) or "settings"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"invalid setting {field}: {first['msg']}{more}"


def setting_variables(model: type[BaseModel] = AgentSettings, prefix: str = "DKNN_") -> set[str]:
    """Every environment variable the settings read: `DKNN_FIELD`, nested `DKNN_FIELD__INNER`."""
    names = set()
    for name, info in model.model_fields.items():
        section = _section(info)
        if section is not None:
            names |= setting_variables(section, f"{prefix}{name.upper()}__")
        else:
            names.add(f"{prefix}{name.upper()}")
    return names


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    moved = {f"DKNN_{name.upper()}" for name in MOVED_TO_METRICS}
    known = setting_variables() | moved
    return sorted(name for name in environ if name.upper().startswith("DKNN_") and name.upper() not in known)


def _check_environment(strict: bool) -> None:
    """A misspelt variable (`DKNN_TRESHOLD=0.9`) would otherwise do nothing, silently."""
    known = sorted(setting_variables())
    for name in unknown_variables(os.environ):
        close = difflib.get_close_matches(name.upper(), known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        message = f"unknown setting variable {name}{hint}"
        if strict:
            raise ConfigError(f"{message}; unset it, or pass --no-strict-config to only warn")
        log.warning("%s: ignored", message)


def load_settings(
    config_file: Path | None = None, overrides: dict[str, Any] | None = None, *, strict: bool = True
) -> AgentSettings:
    """Merges the four sources (see module docstring); every problem is one `ConfigError` line.

    `strict` refuses unknown `DKNN_*` environment variables (else they are logged and ignored).
    """
    _check_environment(strict)
    layer = read_yaml(config_file) if config_file is not None else {}
    given = _drop_none(dict(overrides or {}))
    token = _yaml_layer.set(layer)
    try:
        return AgentSettings(**given)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    except (ValueError, TypeError) as exc:  # e.g. malformed JSON in a complex env variable
        raise ConfigError(f"invalid settings: {' '.join(str(exc).split())}") from None
    finally:
        _yaml_layer.reset(token)


def masked_dump(settings: AgentSettings) -> dict[str, Any]:
    """The effective configuration for the start-up log: JSON types, secrets as `**********`."""
    return settings.model_dump(mode="json")
