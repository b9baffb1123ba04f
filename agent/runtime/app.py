"""`dknn-agent run`: wire settings into a bundle, connectors, metrics and the pipeline, then run.

Start-up fails fast (bad settings, bad bundle, unreachable broker, missing input topic) with one line;
SIGTERM or SIGINT finish the batch in hand, flush, commit and exit 0.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from contextlib import ExitStack

from agent.engine.bundle import BundleTrust
from agent.engine.dknn import DkNN
from agent.engine.drift import DriftMonitor
from agent.engine.taps import native_bfloat16
from agent.runtime.http_server import EndpointSecurity, MetricsServer
from agent.runtime.pipeline import Pipeline, PipelineOptions, PipelineStats
from agent.runtime.routing import Topics
from agent.runtime.settings import AgentSettings, MetricsSettings, masked_dump
from agent.runtime.telemetry import Telemetry
from connectors.registry import create_topics, open_sink, open_source

log = logging.getLogger("dknn.agent")


def run_agent(settings: AgentSettings, summary_every_s: float | None = None) -> int:
    """Builds everything, runs the loop until SIGTERM/SIGINT, and closes what was opened in reverse
    order, also when start-up fails half way (the CLI turns SIGTERM before the loop into exit 0)."""
    log.info("effective settings: %s", json.dumps(masked_dump(settings), default=str))
    trust = BundleTrust(factory_modules=settings.trusted_factories, digest=settings.bundle_digest)
    with ExitStack() as opened:
        scorer = DkNN.from_bundle(settings.artifacts, backend=settings.index, search_k=settings.search_k, trust=trust)
        log.info("bundle %s verified: digest %s", settings.artifacts, scorer.digest)
        if scorer.manifest.model.compute_dtype == "bfloat16" and not native_bfloat16():
            log.warning(
                "the bundle computes its forward passes in bfloat16, and this CPU has no native bfloat16 "
                "(AVX512-BF16 or AMX): scoring will be slower than in float32; refit with --compute-dtype float32"
            )
        telemetry = Telemetry()
        telemetry.set_bundle(scorer.manifest)
        server = opened.enter_context(
            MetricsServer(telemetry, settings.metrics.host, settings.metrics.port, _endpoint_security(settings.metrics))
        )
        log.info("metrics on %s://%s:%d/metrics", server.scheme, settings.metrics.host, server.port)
        security = settings.kafka_security
        if settings.create_topics:
            outputs = [settings.quarantine_topic, settings.dead_letter_topic, settings.scores_topic]
            create_topics(settings.source_uri, [settings.input_topic], settings.create_topics, security=security)
            create_topics(settings.sink_uri, [t for t in outputs if t], settings.create_topics, security=security)
        source = opened.enter_context(
            open_source(
                settings.source_uri,
                topic=settings.input_topic,
                group_id=settings.group_id,
                max_poll_records=settings.batch_size,
                max_record_bytes=settings.max_event_bytes,
                security=security,
                auto_offset_reset=settings.auto_offset_reset,
                extra_config=settings.kafka_tuning.consumer,
            )
        )
        sink = opened.enter_context(
            open_sink(settings.sink_uri, security=security, extra_config=settings.kafka_tuning.producer)
        )
        pipeline = Pipeline(
            scorer,
            source,
            sink,
            Topics(settings.quarantine_topic, settings.dead_letter_topic, settings.scores_topic),
            telemetry,
            DriftMonitor(
                scorer.calibration_alpha,
                scorer.calibration_label_free,
                settings.threshold,
                arl_events=settings.drift_arl_events,
                window=settings.drift_window_events,
            ),
            PipelineOptions.from_settings(settings),
        )
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        reporter = _start_summary(pipeline.stats, stop, summary_every_s) if summary_every_s else None
        try:
            pipeline.run(stop)
        finally:
            stop.set()
            if reporter:
                reporter.join(1)
            _print_summary(pipeline.stats)
    return 0


def _endpoint_security(metrics: MetricsSettings) -> EndpointSecurity:
    password = metrics.basic_auth_password
    return EndpointSecurity(
        certfile=metrics.tls_certfile,
        keyfile=metrics.tls_keyfile,
        username=metrics.basic_auth_username,
        password=password.get_secret_value() if password else None,
        max_connections=metrics.max_connections,
        timeout_s=metrics.timeout_s,
    )


def _start_summary(stats: PipelineStats, stop: threading.Event, every_s: float) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(every_s):
            _print_summary(stats)

    thread = threading.Thread(target=loop, name="summary", daemon=True)
    thread.start()
    return thread


def _print_summary(stats: PipelineStats) -> None:
    elapsed = max(time.monotonic() - stats.started, 1e-9)
    print(
        f"[dknn-agent] {stats.consumed} events ({stats.consumed / elapsed:.0f}/s)  scored {stats.scored}  "
        f"quarantined {stats.quarantined}  dead-lettered {stats.dead_lettered}  "
        f"mean credibility {stats.mean_credibility:.3f}  "
        f"drift {'SHIFTED' if stats.shifted else 'normal'}, {stats.change_alarms} change alarm(s)",
        file=sys.stderr,
        flush=True,
    )
