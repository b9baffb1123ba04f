"""Prometheus telemetry (docs/design.md §6): every metric the agent exports, in one place.

The only module that imports prometheus_client: the pipeline calls small, typed hooks
(`consumed`, `scored`, `dead_lettered`, ...) so metric names, units and label sets are decided in
one place and a test can check them. Every label takes values from a bounded set (verdict,
dead-letter reason, stage, class index, topic/partition, window); anything per-event (event id,
tenant, offset) would explode Prometheus' series count and never becomes a label.

Each `Telemetry` owns its own `CollectorRegistry`, not the process-global default, so tests can
build as many as they like and a library import never registers metrics behind anyone's back.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Literal, get_args

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from agent import __version__
from agent.engine.drift import DriftMonitor, DriftStatus
from agent.engine.manifest import Manifest
from agent.errors import EVENT_ERROR_REASONS
from agent.runtime.routing import OUTPUTS, UNDELIVERABLE, Output, Verdict
from agent.runtime.served import Comparisons
from agent.runtime.wire.review import REVIEW_VERDICTS

NAMESPACE = "dknn"
STAGES = ("poll", "decode", "activations", "knn", "score", "encode", "produce", "commit")
DEAD_LETTER_REASONS = (*EVENT_ERROR_REASONS, UNDELIVERABLE, "other")
WINDOWS = (100, 1000)
SkipReason = Literal["unknown_model"]
SKIP_REASONS: tuple[SkipReason, ...] = get_args(SkipReason)
PROBABILITY_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class _LowCredibilityWindow:
    """The last `size` quarantine decisions in a ring buffer: O(size) memory whatever the rate."""

    def __init__(self, size: int) -> None:
        self._ring = np.zeros(size, dtype=bool)
        self._pos = 0
        self._count = 0

    def extend(self, low: np.ndarray) -> None:
        low = low[-len(self._ring) :]
        idx = (self._pos + np.arange(len(low))) % len(self._ring)
        self._ring[idx] = low
        self._pos = (self._pos + len(low)) % len(self._ring)
        self._count = min(self._count + len(low), len(self._ring))

    def ratio(self, last: int) -> float:
        n = min(last, self._count)
        if n == 0:
            return 0.0
        idx = (self._pos - 1 - np.arange(n)) % len(self._ring)
        return float(self._ring[idx].mean())


class _DriftCollector(Collector):
    """The drift detector's signals, read from the detector when Prometheus scrapes.

    Why a collector, not gauges the pipeline sets: the detector already holds the numbers, and a
    copy kept by hand is one more place for them to disagree (a counter that must follow the alarm
    count by differences, a gauge forgotten on a new path). Scrapes run on the HTTP server's
    threads while the pipeline feeds the detector, so they read its `status`: an immutable snapshot
    the detector replaces whole after each batch, consistent across all six series without a lock.
    Before a detector is watched the families are exported without samples (no value is honest:
    there is no threshold or state yet).
    """

    _CHANGES = (
        "Distribution-change alarms: the conformal Shiryaev-Roberts statistic reached its "
        "threshold (it restarts after each)."
    )
    _GAUGES = (
        ("drift_change_statistic_log10", "log10 of the change statistic R."),
        (
            "drift_change_threshold_log10",
            "log10 of the change threshold: the mean number of events between false alarms is at least 10^this.",
        ),
        (
            "drift_shifted",
            "1 while the windowed low-credibility share is above its calibrated bound (the shifted state), else 0.",
        ),
        ("drift_window_low_credibility_ratio", "Share of the drift window's events below the quarantine threshold."),
        (
            "drift_window_low_credibility_bound",
            "The share at which the shifted state turns on; unshifted traffic stays below it.",
        ),
    )

    def __init__(self) -> None:
        self._watched: tuple[DriftMonitor, float] | None = None  # with when its counter started

    def watch(self, monitor: DriftMonitor) -> None:
        self._watched = (monitor, time.time())

    def describe(self) -> Iterable[Metric]:
        """The families without samples: lets the registry refuse a second metric of the same name."""
        return self._families(None, 0.0)

    def collect(self) -> Iterable[Metric]:
        watched = self._watched  # one read: a `watch` between two reads cannot mix two detectors
        return self._families(watched[0].status, watched[1]) if watched else self._families(None, 0.0)

    def _families(self, status: DriftStatus | None, created: float) -> list[Metric]:
        changes = CounterMetricFamily(f"{NAMESPACE}_drift_change", self._CHANGES)
        gauges = [GaugeMetricFamily(f"{NAMESPACE}_{name}", text) for name, text in self._GAUGES]
        if status is not None:
            changes.add_metric([], status.alarms, created=created)
            values = (
                status.log10_statistic,
                status.log10_threshold,
                1.0 if status.shifted else 0.0,
                status.window_ratio,
                status.window_bound,
            )
            for family, value in zip(gauges, values, strict=True):
                family.add_metric([], value)
        return [changes, *gauges]


def build_info(registry: CollectorRegistry) -> Info:
    """`dknn_build_info`, which the agent and the review console each export on their own registry."""
    info = Info("build", "dknn-agent build.", namespace=NAMESPACE, registry=registry)
    info.info({"version": __version__, "python": platform.python_version()})
    return info


class Telemetry:
    """All agent metrics on one private registry, plus the readiness flag /readyz reports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg, ns = self.registry, NAMESPACE
        self.events_consumed = Counter(
            "events_consumed", "Records polled from the input topic.", namespace=ns, registry=reg
        )
        self.events_scored = Counter(
            "events_scored", "Valid events scored, by routing verdict.", ["verdict"], namespace=ns, registry=reg
        )
        self.events_dead_lettered = Counter(
            "events_dead_lettered",
            "Invalid events sent to the dead-letter topic, by reason.",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.credibility = Histogram(
            "credibility",
            "DkNN credibility (max p-value) of scored events.",
            namespace=ns,
            registry=reg,
            buckets=PROBABILITY_BUCKETS,
        )
        self.confidence = Histogram(
            "confidence",
            "DkNN confidence (1 - second largest p-value).",
            namespace=ns,
            registry=reg,
            buckets=CONFIDENCE_BUCKETS,
        )
        self.predictions = Counter(
            "predictions", "DkNN predictions, by class index.", ["label"], namespace=ns, registry=reg
        )
        self.model_disagreements = Counter(
            "model_disagreements",
            "Events where the DkNN prediction differs from the model's own.",
            namespace=ns,
            registry=reg,
        )
        self.stage_duration = Histogram(
            "stage_duration_seconds",
            "Wall time per pipeline stage and batch.",
            ["stage"],
            namespace=ns,
            registry=reg,
            buckets=STAGE_BUCKETS,
        )
        self.event_latency = Histogram(
            "event_latency_seconds",
            "Event timestamp to scored, per event.",
            namespace=ns,
            registry=reg,
            buckets=LATENCY_BUCKETS,
        )
        self.consumer_lag = Gauge(
            "consumer_lag_messages",
            "Messages behind the partition end.",
            ["topic", "partition"],
            namespace=ns,
            registry=reg,
        )
        self._drift = _DriftCollector()
        reg.register(self._drift)
        self.ready_gauge = Gauge(
            "ready", "1 once the bundle is loaded and partitions are assigned (as /readyz).", namespace=ns, registry=reg
        )
        self.low_credibility_ratio = Gauge(
            "low_credibility_ratio",
            "Fraction of the last N scored events below the quarantine threshold.",
            ["window"],
            namespace=ns,
            registry=reg,
        )
        self.outputs_refused = Counter(
            "outputs_refused",
            "Output records a sink refused for good (too large, not "
            "authorised) and replaced by their fallback, by output.",
            ["output"],
            namespace=ns,
            registry=reg,
        )
        self.commits_rejected = Counter(
            "commits_rejected",
            "Commits the consumer group refused after a rebalance; the batch went to the partitions' new owner.",
            namespace=ns,
            registry=reg,
        )
        self.events_skipped = Counter(
            "events_skipped",
            "Records skipped without an output, by reason (unknown_model: for another model, with unknown_model: skip).",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.served_compared = Counter(
            "served_answers_compared",
            "Served answers (a v1 event's prediction, an inference response) compared with the model's "
            "answer recomputed from the bundle.",
            namespace=ns,
            registry=reg,
        )
        self.served_mismatches = Counter(
            "served_answer_mismatches",
            "Compared served answers that differ from the recomputed one: the server runs another model "
            "version than the bundle.",
            namespace=ns,
            registry=reg,
        )
        self.served_unmatched = Counter(
            "served_answers_unmatched",
            "Requests or responses forgotten before their other half arrived (bounded memory; another replica "
            "may hold it).",
            namespace=ns,
            registry=reg,
        )
        self.bundle_info = Info("bundle", "The artifact bundle being served.", namespace=ns, registry=reg)
        self.build_info = build_info(reg)
        for verdict in Verdict:  # pre-create: a rate() over a series that appears late misses its start
            self.events_scored.labels(verdict=verdict)
        for reason in DEAD_LETTER_REASONS:
            self.events_dead_lettered.labels(reason=reason)
        for stage in STAGES:
            self.stage_duration.labels(stage=stage)
        for output in OUTPUTS:
            self.outputs_refused.labels(output=output)
        for reason in SKIP_REASONS:
            self.events_skipped.labels(reason=reason)
        self._window = _LowCredibilityWindow(max(WINDOWS))
        for window in WINDOWS:
            self.low_credibility_ratio.labels(window=str(window)).set(0.0)
        self._num_classes: int | None = None
        self._ready = threading.Event()

    # -- hooks the pipeline calls ------------------------------------------------------------

    def consumed(self, n: int) -> None:
        self.events_consumed.inc(n)

    def scored(
        self,
        credibility: np.ndarray,
        confidence: np.ndarray,
        prediction: np.ndarray,
        model_prediction: np.ndarray,
        quarantined: np.ndarray,
    ) -> None:
        """One micro-batch of scored events; all arrays have one entry per event."""
        quarantined = np.asarray(quarantined, dtype=bool)
        n_quarantined = int(quarantined.sum())
        self.events_scored.labels(verdict=Verdict.QUARANTINED).inc(n_quarantined)
        self.events_scored.labels(verdict=Verdict.ACCEPTED).inc(len(quarantined) - n_quarantined)
        for value in np.asarray(credibility, dtype=float):
            self.credibility.observe(value)
        for value in np.asarray(confidence, dtype=float):
            self.confidence.observe(value)
        prediction = np.asarray(prediction, dtype=np.int64)
        labels, counts = np.unique(prediction, return_counts=True)
        for label, count in zip(labels.tolist(), counts.tolist(), strict=True):
            if label >= 0 and (self._num_classes is None or label < self._num_classes):
                self.predictions.labels(label=str(label)).inc(count)
        self.model_disagreements.inc(int((prediction != np.asarray(model_prediction)).sum()))
        self._window.extend(quarantined)
        for window in WINDOWS:
            self.low_credibility_ratio.labels(window=str(window)).set(self._window.ratio(window))

    def dead_lettered(self, reason: str, n: int = 1) -> None:
        """Unknown reasons are counted as "other" so a new error path cannot add label values."""
        self.events_dead_lettered.labels(reason=reason if reason in DEAD_LETTER_REASONS else "other").inc(n)

    def skipped(self, reason: SkipReason, n: int) -> None:
        self.events_skipped.labels(reason=reason).inc(n)

    def served_answers(self, comparisons: Comparisons) -> None:
        self.served_compared.inc(comparisons.compared)
        self.served_mismatches.inc(comparisons.mismatched)
        self.served_unmatched.inc(comparisons.unmatched)

    def refused(self, output: Output) -> None:
        self.outputs_refused.labels(output=output).inc()

    def commit_rejected(self) -> None:
        self.commits_rejected.inc()

    def observe_latency(self, seconds: float | np.ndarray) -> None:
        """Clock skew between producer and agent can make latency negative; it is clamped to 0."""
        for value in np.atleast_1d(np.asarray(seconds, dtype=float)):
            self.event_latency.observe(max(float(value), 0.0))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Times a block into dknn_stage_duration_seconds{stage=name}, also when it raises."""
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; one of {', '.join(STAGES)}")
        histogram = self.stage_duration.labels(stage=name)
        start = time.perf_counter()
        try:
            yield
        finally:
            histogram.observe(time.perf_counter() - start)

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        self.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)

    def clear_lag(self, topic: str, partition: int) -> None:
        """Drop a revoked partition's series so its last value does not linger as a false lag."""
        with suppress(KeyError):
            self.consumer_lag.remove(topic, str(partition))

    def watch_drift(self, monitor: DriftMonitor) -> None:
        """Exports `monitor`'s signals (`dknn_drift_*`) from now on, read at each scrape."""
        self._drift.watch(monitor)

    def set_bundle(self, manifest: Manifest) -> None:
        self._num_classes = manifest.model.num_classes
        self.bundle_info.info(
            {
                "model": manifest.model.name,
                "version": manifest.model.version,
                "k": str(manifest.k),
                "layers": ",".join(manifest.layer_names),
                "index": manifest.index.kind,
                "calibration_size": str(manifest.calibration.size),
            }
        )
        for label in range(self._num_classes):
            self.predictions.labels(label=str(label))

    def set_ready(self, ready: bool) -> None:
        """The pipeline flips this once the bundle is loaded and partitions are assigned."""
        self.ready_gauge.set(1.0 if ready else 0.0)
        if ready:
            self._ready.set()
        else:
            self._ready.clear()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def exposition(self) -> tuple[bytes, str]:
        """The metrics page and its content type, for the HTTP endpoint."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


REVIEW_LATENCY_BUCKETS = (60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0)
CONSOLE_SKIP_TOPICS = ("quarantine", "reviews")


class ReviewTelemetry:
    """The review console's metrics (`dknn-agent review`, docs/design.md §5.5 and §6), on a registry of
    its own: the console is another process with another /metrics, and none of the agent's series
    belong on it. The console calls `reviewed`, `skipped` and `state` after each batch it stored."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg, ns = self.registry, NAMESPACE
        self.reviews = Counter(
            "reviews", "Reviews read from the reviews topic, by verdict.", ["verdict"], namespace=ns, registry=reg
        )
        self.coverage = Gauge(
            "review_coverage_ratio",
            "Quarantined events in the console's store that have a review, over all it holds.",
            namespace=ns,
            registry=reg,
        )
        self.latency = Histogram(
            "review_latency_seconds",
            "Quarantine record timestamp to the review's reviewed_at, per review of a held event.",
            namespace=ns,
            registry=reg,
            buckets=REVIEW_LATENCY_BUCKETS,
        )
        self.precision = Gauge(
            "quarantine_precision_ratio",
            "Of the reviewed quarantined events, the share reviewed model_wrong or out_of_scope (real problems); "
            "0 before any review.",
            namespace=ns,
            registry=reg,
        )
        self.events = Gauge(
            "review_console_events", "Quarantined events the console's store holds.", namespace=ns, registry=reg
        )
        self.records_skipped = Counter(
            "review_console_records_skipped",
            "Records the console could not use and skipped, by topic (quarantine, reviews) and reason.",
            ["topic", "reason"],
            namespace=ns,
            registry=reg,
        )
        self.build_info = build_info(reg)
        for verdict in REVIEW_VERDICTS:
            self.reviews.labels(verdict=verdict)

    def reviewed(self, verdict: str, latency_s: float | None) -> None:
        """One review read off the topic; `latency_s` where its event is held (negative clamped to 0)."""
        if verdict in REVIEW_VERDICTS:
            self.reviews.labels(verdict=verdict).inc()
        if latency_s is not None:
            self.latency.observe(max(0.0, latency_s))

    def skipped(self, topic: str, reason: str) -> None:
        """`reason` must come from a bounded set (ReviewError's reasons, the console's own)."""
        self.records_skipped.labels(topic=topic if topic in CONSOLE_SKIP_TOPICS else "other", reason=reason).inc()

    def state(self, events: int, coverage: float, precision: float | None) -> None:
        """The store's counts as of its last write; `precision` None (nothing reviewed) reads 0."""
        self.events.set(events)
        self.coverage.set(coverage)
        self.precision.set(precision or 0.0)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
