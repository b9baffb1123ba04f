"""The contract between the agent, the rules and the dashboards: metrics read from the agent itself,
and the alert names the rules define.

One source: a `Telemetry` is built, given a bundle and a lag sample so every family has its series,
and its exposition is parsed. A metric renamed or dropped in `agent/runtime/telemetry.py` therefore
fails the rule and dashboard checks at once, instead of drifting from a list kept by hand.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from agent.engine.manifest import IndexSpec, InputSpec, LayerSpec, Manifest, ModelSpec, SplitSpec
from agent.runtime.routing import OUTPUTS, Verdict
from agent.runtime.telemetry import DEAD_LETTER_REASONS, SKIP_REASONS, STAGES, WINDOWS, ReviewTelemetry, Telemetry
from agent.runtime.wire.review import REVIEW_VERDICTS


def _exported() -> dict[str, tuple[str, set[str]]]:
    telemetry = Telemetry()
    telemetry.set_bundle(
        Manifest(
            created_at="2026-01-01T00:00:00Z",
            model=ModelSpec(name="m", version="1", factory="dknn_lab.models.tiny:build_model", num_classes=3),
            inputs=(InputSpec(shape=(8,)),),
            layers=(LayerSpec(name="relu1", input_dim=16, dim=16, index_file="layers/relu1.ann"),),
            k=10,
            index=IndexSpec(n_trees=10, search_k=-1),
            train=SplitSpec(size=600),
            calibration=SplitSpec(size=200),
            libraries={},
            files={},
        )
    )
    telemetry.set_lag("inference-events", 0, 1)
    text, _ = telemetry.exposition()
    return _families(text)


def _exported_by_the_console() -> dict[str, tuple[str, set[str]]]:
    """The review console's families (`dknn-agent review`, its own process and /metrics), each with a series."""
    telemetry = ReviewTelemetry()
    telemetry.reviewed("model_wrong", 60.0)
    telemetry.skipped("quarantine", "bad_json")
    telemetry.state(events=4, coverage=0.5, precision=0.5)
    text, _ = telemetry.exposition()
    return _families(text)


def _families(text: bytes) -> dict[str, tuple[str, set[str]]]:
    """Family name as queried (counters with _total, infos with _info) -> (type, labels but le)."""
    families: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(text.decode()):
        if family.name.endswith("_created"):  # client_python's creation timestamps, not metrics to query
            continue
        labels = {label for sample in family.samples for label in sample.labels} - {"le"}
        name = family.name + ("_total" if family.type == "counter" else "_info" if family.type == "info" else "")
        families[name] = (family.type, labels)
    return families


_FAMILIES = _exported()
COUNTERS = {name: labels for name, (kind, labels) in _FAMILIES.items() if kind == "counter"}
GAUGES = {name: labels for name, (kind, labels) in _FAMILIES.items() if kind in ("gauge", "info")}
HISTOGRAMS = {name: labels for name, (kind, labels) in _FAMILIES.items() if kind == "histogram"}
# Every series name a query may use: histograms only through _bucket, _sum and _count.
CONTRACT = (
    set(COUNTERS) | set(GAUGES) | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)
# Bounded label values a query may select on, from the constants the agent labels with. Two
# counters carry `reason` with different sets: its values here are both, METRIC_LABEL_VALUES says
# which are whose.
LABEL_VALUES = {
    "verdict": {verdict.value for verdict in Verdict},
    "reason": set(DEAD_LETTER_REASONS) | set(SKIP_REASONS),
    "stage": set(STAGES),
    "output": set(OUTPUTS),
    "window": {str(window) for window in WINDOWS},
}
METRIC_LABEL_VALUES = {
    ("dknn_events_dead_lettered_total", "reason"): set(DEAD_LETTER_REASONS),
    ("dknn_events_skipped_total", "reason"): set(SKIP_REASONS),
    ("dknn_reviews_total", "verdict"): set(REVIEW_VERDICTS),  # a review's verdict, not the agent's
}

# The review console's metrics (`dknn-agent review`, issue #24): its own process and scrape job, so a
# contract of its own, read from its telemetry like the agent's, which the dashboards' Review row reads
# (scoped to $review_job) and the rules never do. A family both export (dknn_build_info) is the agent's.
_CONSOLE = {name: family for name, family in _exported_by_the_console().items() if name not in _FAMILIES}
REVIEW_COUNTERS = {name: labels for name, (kind, labels) in _CONSOLE.items() if kind == "counter"}
REVIEW_GAUGES = {name: labels for name, (kind, labels) in _CONSOLE.items() if kind in ("gauge", "info")}
REVIEW_HISTOGRAMS = {name: labels for name, (kind, labels) in _CONSOLE.items() if kind == "histogram"}
REVIEW_METRICS = set(_CONSOLE)
CONSOLE_FAMILIES = set(_exported_by_the_console())  # the shared ones included


def label_values(metric: str, label: str) -> set[str] | None:
    """The values `label` takes on `metric`; None when they are not a bounded set."""
    return METRIC_LABEL_VALUES.get((metric, label), LABEL_VALUES.get(label))


# The alerts dashboards/prometheus/rules.yml defines (test_prometheus_rules checks it defines exactly
# these; the dashboards' annotations may only name these).
ALERT_NAMES = {
    "DknnDistributionShiftDetected",
    "DknnTrafficShifted",
    "DknnLowCredibilityRateHigh",
    "DknnDeadLetterRateHigh",
    "DknnConsumerLagGrowing",
    "DknnAgentDown",
    "DknnAgentNotReady",
    "DknnNoEventsWhileLagGrows",
    "DknnModelVersionMismatch",
    "DknnOutputsRefused",
    "DknnServedAnswerMismatch",
}
