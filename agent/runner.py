"""`dknn-agent run`: wire settings into a bundle, connectors, metrics and the pipeline, then run.

Start-up fails fast (bad settings, bad bundle, unreachable broker, missing topics) with one line;
SIGTERM or SIGINT finish the batch in hand, flush, commit and exit 0.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from agent.dknn import DkNN
from agent.errors import ConfigError
from agent.metrics import MetricsServer, Telemetry
from agent.pipeline import Pipeline, PipelineOptions, PipelineStats, Topics
from agent.settings import AgentSettings, masked_dump
from agent.shift import ShiftDetector
from connectors.base import Sink, Source
from connectors.file import FileSink, FileSource

log = logging.getLogger("dknn.agent")


def _file_target(spec: str | None) -> Path | None:
    if spec is None:
        return None
    kind, _, path = spec.partition(":")
    if kind != "file" or not path:
        raise ConfigError(f"connector {spec!r}: only 'file:PATH' is supported besides Kafka")
    return Path(path)


def _security(settings: AgentSettings):
    from connectors.kafka import KafkaSecurity

    sec = settings.kafka_security
    password = sec.sasl_plain_password.get_secret_value() if sec.sasl_plain_password else None
    return KafkaSecurity(security_protocol=sec.security_protocol, sasl_mechanism=sec.sasl_mechanism,
                         sasl_plain_username=sec.sasl_plain_username, sasl_plain_password=password,
                         ssl_cafile=sec.ssl_cafile, ssl_certfile=sec.ssl_certfile, ssl_keyfile=sec.ssl_keyfile)


def build_source(settings: AgentSettings) -> Source:
    if path := _file_target(settings.source):
        return FileSource(path, topic=settings.input_topic)
    from connectors.kafka import KafkaSource

    if not settings.bootstrap_servers:
        raise ConfigError("no input: set --bootstrap-servers (DKNN_BOOTSTRAP_SERVERS) or --source file:PATH")
    return KafkaSource(settings.bootstrap_servers, [settings.input_topic], settings.group_id,
                       max_poll_records=settings.batch_size, security=_security(settings))


def build_sink(settings: AgentSettings) -> Sink:
    if path := _file_target(settings.sink):
        return FileSink(path)
    from connectors.kafka import KafkaSink

    if not settings.bootstrap_servers:
        raise ConfigError("no output: set --bootstrap-servers (DKNN_BOOTSTRAP_SERVERS) or --sink file:DIR")
    return KafkaSink(settings.bootstrap_servers, security=_security(settings))


def run_agent(settings: AgentSettings, summary_every_s: float | None = None) -> int:
    log.info("effective settings: %s", json.dumps(masked_dump(settings), default=str))
    scorer = DkNN.from_bundle(settings.artifacts, backend=settings.index, search_k=settings.search_k)
    telemetry = Telemetry()
    telemetry.set_bundle(scorer.manifest)
    server = MetricsServer(telemetry, settings.metrics_host, settings.metrics_port)
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, server.port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    source = build_source(settings)
    sink = build_sink(settings)
    pipeline = Pipeline(
        scorer, source, sink,
        Topics(settings.quarantine_topic, settings.dead_letter_topic, settings.scores_topic),
        telemetry, ShiftDetector(scorer.calibration_label_free, threshold=settings.shift_lambda),
        PipelineOptions(threshold=settings.threshold, batch_size=settings.batch_size,
                        max_batch_wait_s=settings.max_batch_wait_s, max_event_bytes=settings.max_event_bytes),
    )
    reporter = _start_summary(pipeline.stats, stop, summary_every_s) if summary_every_s else None
    try:
        pipeline.run(stop)
    finally:
        stop.set()
        source.close()
        sink.close()
        server.close()
        if reporter:
            reporter.join(1)
        _print_summary(pipeline.stats)
    return 0


def _start_summary(stats: PipelineStats, stop: threading.Event, every_s: float) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(every_s):
            _print_summary(stats)

    thread = threading.Thread(target=loop, name="summary", daemon=True)
    thread.start()
    return thread


def _print_summary(stats: PipelineStats) -> None:
    elapsed = max(time.monotonic() - stats.started, 1e-9)
    print(f"[dknn-agent] {stats.consumed} events ({stats.consumed / elapsed:.0f}/s)  scored {stats.scored}  "
          f"quarantined {stats.quarantined}  dead-lettered {stats.dead_lettered}  "
          f"mean credibility {stats.mean_credibility:.3f}", file=sys.stderr, flush=True)
