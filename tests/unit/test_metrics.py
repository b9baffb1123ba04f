"""Telemetry: metric names and values as Prometheus sees them over real HTTP, health endpoints."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.engine.drift import DriftMonitor
from agent.engine.manifest import IndexSpec, InputSpec, LayerSpec, Manifest, ModelSpec, SplitSpec
from agent.runtime.http_server import MetricsServer
from agent.runtime.telemetry import STAGES, WINDOWS, Telemetry

ALLOWED_LABELS = {
    "verdict",
    "output",
    "reason",
    "stage",
    "label",
    "topic",
    "partition",
    "window",
    "le",
    "model",
    "version",
    "k",
    "layers",
    "index",
    "calibration_size",
    "python",
}


def manifest() -> Manifest:
    return Manifest(
        created_at="2025-01-01T00:00:00Z",
        model=ModelSpec(name="tiny", version="7", factory="dknn_lab.models.tiny:build_model", num_classes=3),
        inputs=(InputSpec(shape=(8,)),),
        layers=(
            LayerSpec(name="relu1", input_dim=16, dim=16, index_file="layers/relu1.ann"),
            LayerSpec(name="logits", input_dim=3, dim=2, preprocessing="pca:2", index_file="layers/logits.ann"),
        ),
        k=10,
        index=IndexSpec(n_trees=10, search_k=-1),
        train=SplitSpec(size=600),
        calibration=SplitSpec(size=200),
        libraries={},
        files={},
    )


@pytest.fixture
def served() -> Iterator[tuple[Telemetry, MetricsServer]]:
    telemetry = Telemetry()
    server = MetricsServer(telemetry, host="127.0.0.1", port=0)
    try:
        yield telemetry, server
    finally:
        server.close()


def get(server: MetricsServer, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def scrape(server: MetricsServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, content_type, body = get(server, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_counters_histograms_and_gauges_over_http(served: tuple[Telemetry, MetricsServer]) -> None:
    telemetry, server = served
    telemetry.set_bundle(manifest())
    telemetry.consumed(7)
    telemetry.scored(
        credibility=np.array([0.03, 0.5, 0.9, 0.08, 0.6]),
        confidence=np.array([0.99, 0.8, 0.95, 0.5, 0.7]),
        prediction=np.array([0, 1, 1, 2, 1]),
        model_prediction=np.array([0, 1, 2, 0, 1]),
        quarantined=np.array([True, False, False, True, False]),
    )
    telemetry.dead_lettered("shape")
    telemetry.dead_lettered("bad_json", n=2)
    telemetry.dead_lettered("something-new")
    telemetry.observe_latency(np.array([0.02, 0.3, -1.0]))
    with telemetry.stage("knn"):
        time.sleep(0.002)
    telemetry.set_lag("inference-events", 3, 42)
    monitor = DriftMonitor(np.arange(200), np.arange(200), threshold=0.1, arl_events=100.0, window=10)
    telemetry.watch_drift(monitor)
    monitor.update(np.full(40, 300), np.ones(40, dtype=bool))  # strange and low-credibility: both signals

    s = scrape(server)
    assert value(s, "dknn_events_consumed_total") == 7
    assert value(s, "dknn_events_scored_total", verdict="quarantined") == 2
    assert value(s, "dknn_events_scored_total", verdict="accepted") == 3
    assert value(s, "dknn_events_dead_lettered_total", reason="shape") == 1
    assert value(s, "dknn_events_dead_lettered_total", reason="bad_json") == 2
    assert value(s, "dknn_events_dead_lettered_total", reason="other") == 1
    assert value(s, "dknn_events_dead_lettered_total", reason="too_large") == 0  # pre-created
    assert value(s, "dknn_credibility_count") == 5
    assert value(s, "dknn_credibility_bucket", le="0.1") == 2
    assert value(s, "dknn_credibility_sum") == pytest.approx(2.11)
    assert value(s, "dknn_confidence_bucket", le="0.9") == 3
    assert [value(s, "dknn_predictions_total", label=str(c)) for c in range(3)] == [1, 3, 1]
    assert value(s, "dknn_model_disagreements_total") == 2
    assert value(s, "dknn_event_latency_seconds_count") == 3
    assert value(s, "dknn_event_latency_seconds_bucket", le="0.005") == 1  # negative clamped to 0
    assert value(s, "dknn_stage_duration_seconds_count", stage="knn") == 1
    assert value(s, "dknn_stage_duration_seconds_sum", stage="knn") >= 0.002
    assert value(s, "dknn_consumer_lag_messages", topic="inference-events", partition="3") == 42
    assert value(s, "dknn_drift_change_total") == monitor.change.alarms >= 1
    assert value(s, "dknn_drift_change_threshold_log10") == 2.0
    assert value(s, "dknn_drift_shifted") == 1 and value(s, "dknn_drift_window_low_credibility_ratio") == 1.0
    assert 0 < value(s, "dknn_drift_window_low_credibility_bound") <= 1
    assert value(s, "dknn_low_credibility_ratio", window="100") == pytest.approx(0.4)
    info = value(
        s,
        "dknn_bundle_info",
        model="tiny",
        version="7",
        k="10",
        layers="relu1,logits",
        index="annoy",
        calibration_size="200",
    )
    assert info == 1
    assert any(name == "dknn_build_info" for name, _ in s)

    telemetry.clear_lag("inference-events", 3)
    telemetry.clear_lag("inference-events", 99)  # unknown: harmless
    alarms = monitor.change.alarms
    monitor.update(np.full(40, 300), np.ones(40, dtype=bool))  # read at the scrape: nothing to mirror
    s = scrape(server)
    assert not any(name == "dknn_consumer_lag_messages" for name, _ in s)
    assert value(s, "dknn_drift_change_total") == monitor.change.alarms > alarms


def test_low_credibility_windows_roll() -> None:
    telemetry = Telemetry()
    ones, zeros = np.ones(150, dtype=bool), np.zeros(950, dtype=bool)
    for batch in (ones, zeros):  # 150 low, then 950 fine: window 100 is clean, 1000 holds 50 low
        telemetry.scored(
            np.full(len(batch), 0.5), np.full(len(batch), 0.5), np.zeros(len(batch)), np.zeros(len(batch)), batch
        )
    ratios = {w: telemetry.registry.get_sample_value("dknn_low_credibility_ratio", {"window": str(w)}) for w in WINDOWS}
    assert ratios == {100: 0.0, 1000: pytest.approx(0.05)}
    telemetry.scored(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3), np.ones(3, dtype=bool))
    assert telemetry.registry.get_sample_value("dknn_low_credibility_ratio", {"window": "100"}) == pytest.approx(0.03)


def test_health_and_readiness(served: tuple[Telemetry, MetricsServer]) -> None:
    telemetry, server = served
    assert get(server, "/healthz")[0] == 200
    assert get(server, "/readyz")[0] == 503
    telemetry.set_ready(True)
    assert get(server, "/readyz")[0] == 200
    telemetry.set_ready(False)
    assert get(server, "/readyz")[0] == 503
    assert get(server, "/nope")[0] == 404
    assert get(server, "/metrics?name[]=x")[0] == 200


def test_only_bounded_labels_and_prometheus_naming(served: tuple[Telemetry, MetricsServer]) -> None:
    telemetry, server = served
    telemetry.set_bundle(manifest())
    for i in range(50):  # many distinct events must not create per-event series
        telemetry.scored(np.array([0.5]), np.array([0.9]), np.array([i % 3]), np.array([i % 3]), np.array([False]))
    _, _, body = get(server, "/metrics")
    families = list(text_string_to_metric_families(body))
    assert all(f.name.startswith("dknn_") for f in families)
    for family in families:
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, sample
    series = sum(len(f.samples) for f in families)
    telemetry.scored(np.array([0.5]), np.array([0.9]), np.array([1]), np.array([1]), np.array([False]))
    _, _, body = get(server, "/metrics")
    assert sum(len(f.samples) for f in text_string_to_metric_families(body)) == series


def test_stage_rejects_unknown_names_and_times_failures() -> None:
    telemetry = Telemetry()
    with pytest.raises(ValueError), telemetry.stage("event-1234"):
        pass
    with pytest.raises(RuntimeError), telemetry.stage("score"):
        raise RuntimeError("boom")
    assert telemetry.registry.get_sample_value("dknn_stage_duration_seconds_count", {"stage": "score"}) == 1
    assert set(STAGES) >= {"decode", "activations", "knn", "score", "produce"}


def test_many_registries_coexist() -> None:
    first, second = Telemetry(), Telemetry()
    first.consumed(3)
    assert b"dknn_events_consumed_total 3.0" in first.exposition()[0]
    assert b"dknn_events_consumed_total 0.0" in second.exposition()[0]


DRIFT_SERIES = (
    "dknn_drift_change_total",
    "dknn_drift_change_statistic_log10",
    "dknn_drift_change_threshold_log10",
    "dknn_drift_shifted",
    "dknn_drift_window_low_credibility_ratio",
    "dknn_drift_window_low_credibility_bound",
)


def drift_values(telemetry: Telemetry) -> tuple[float | None, ...]:
    """The drift series of one scrape (one pass over the registry, as the HTTP endpoint makes)."""
    samples = {sample.name: sample.value for family in telemetry.registry.collect() for sample in family.samples}
    return tuple(samples.get(name) for name in DRIFT_SERIES)


def test_drift_series_follow_the_detector_at_each_scrape() -> None:
    telemetry = Telemetry()
    text = telemetry.exposition()[0].decode()
    assert all(f"# TYPE {name} " in text for name in DRIFT_SERIES)  # declared before any detector...
    assert drift_values(telemetry) == (None,) * len(DRIFT_SERIES)  # ...with no value to report yet
    monitor = DriftMonitor(np.arange(200), np.arange(200), threshold=0.1, arl_events=1000.0, window=10)
    telemetry.watch_drift(monitor)
    assert drift_values(telemetry) == (0.0, -10.0, 3.0, 0.0, 0.0, monitor.state.bound)
    assert telemetry.registry.get_sample_value("dknn_drift_change_created") == pytest.approx(time.time(), abs=60)

    monitor.update(np.full(60, 300), np.ones(60, dtype=bool))
    alarms = monitor.change.alarms
    assert alarms >= 1
    expected = (alarms, monitor.change.log10_statistic, 3.0, 1.0, 1.0, monitor.state.bound)
    assert drift_values(telemetry) == pytest.approx(expected)
    monitor.update(np.arange(100) % 200, np.zeros(100, dtype=bool))  # calibration-like again: the state clears
    assert drift_values(telemetry)[3:5] == (0.0, 0.0)
    assert drift_values(telemetry)[0] == monitor.change.alarms >= alarms  # a counter: never goes back


def test_drift_scrapes_from_another_thread_see_one_batch_at_a_time() -> None:
    """The HTTP server scrapes while the pipeline feeds the detector: every scrape shows the six
    values of one published status, never a mix of two batches."""
    published: list[tuple[float, ...]] = []

    class Recorded(DriftMonitor):
        def _snapshot(self):  # type: ignore[no-untyped-def]
            status = super()._snapshot()
            published.append(
                (
                    status.alarms,
                    status.log10_statistic,
                    status.log10_threshold,
                    float(status.shifted),
                    status.window_ratio,
                    status.window_bound,
                )
            )
            return status

    telemetry = Telemetry()
    monitor = Recorded(np.arange(200), np.arange(200), threshold=0.1, arl_events=50.0, window=10)
    telemetry.watch_drift(monitor)
    rng = np.random.default_rng(0)
    done = threading.Event()
    scraped: list[tuple[float | None, ...]] = []

    def scrape_until_done() -> None:
        while not done.is_set():
            scraped.append(drift_values(telemetry))

    scraper = threading.Thread(target=scrape_until_done)
    scraper.start()
    try:
        for _ in range(20_000):  # until enough scrapes overlapped the updates
            strange = rng.random() < 0.5
            scores = np.full(7, 300) if strange else rng.integers(0, 200, 7)
            monitor.update(scores, np.full(7, strange))
            if len(scraped) >= 100:
                break
    finally:
        done.set()
        scraper.join()
    assert len(scraped) >= 100
    known = set(published)
    assert all(values in known for values in scraped)
    counts = [values[0] for values in scraped]
    assert counts == sorted(counts)  # the change counter never goes back
