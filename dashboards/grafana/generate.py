#!/usr/bin/env python3
"""Generate the dknn-agent Grafana dashboards (dashboards as code).

    python dashboards/grafana/generate.py          # (re)write the committed JSON files
    python dashboards/grafana/generate.py --check  # exit 1, with a diff, if they are stale

Two dashboards, written next to this file and committed:

- ``dknn-overview.json`` (uid ``dknn-overview``) for on-call: is the agent healthy, is traffic
  shifted, what is being quarantined or dead-lettered, and what reviewers make of the quarantine
  (the review console's metrics, a scrape job of its own chosen by ``$review_job``);
- ``dknn-detail.json`` (uid ``dknn-detail``): the same signals per instance, topic/partition,
  stage, label and output, for the investigation that follows.

Built with the official ``grafana-foundation-sdk`` (pinned to an exact build: the plain
``pip install`` resolves an old 10.1 build). Every query uses only the agent's raw metrics
(namespace ``dknn``, docs/design.md §6) plus the series Prometheus itself creates (``up``,
``ALERTS``): no recording rules. The data source, ``job`` and ``instance`` are template
variables; dashboard uids and panel ids are fixed here, so links and provisioning survive a
regeneration. ``validate.sh`` checks the output against Grafana's own dashboard schema.

Bump ``DASHBOARD_VERSION`` when a change to the dashboards should be visible to whoever
provisions them.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models import prometheus as pm

HERE = Path(__file__).resolve().parent

#: Incremented whenever the generated dashboards change in a way that matters to a reader.
DASHBOARD_VERSION = 3

OVERVIEW_UID = "dknn-overview"
DETAIL_UID = "dknn-detail"
TAGS = ["dknn", "dknn-agent"]

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

#: Every panel query is scoped to the selected job and instances.
SCOPE = 'job="$job", instance=~"$instance"'
RATE = "$__rate_interval"
#: The review console (`dknn-agent review`) is one process and a scrape job of its own, not a replica
#: of the agent: its queries are scoped to the job `$review_job` picks.
REVIEW_SCOPE = 'job="$review_job"'
#: What finds the agent's jobs and replicas: a gauge every agent exports from its start and the review
#: console does not (both export dknn_build_info), so $job never offers the console's job.
AGENT_SERIES = "dknn_ready"

#: The agent's alerts (deploy rules name them Dknn*). Alerts about the shift detector get their
#: own colour; an alert with no job label (a rule that aggregated it away) still shows.
SHIFT_ALERTS = "DknnDistributionShiftDetected|DknnTrafficShifted"
ALERT_SCOPE = 'alertstate="firing", job=~"$job|"'

GREEN, ORANGE, RED, BLUE, PURPLE = "green", "orange", "red", "blue", "purple"

PanelBuilder = Any  # the SDK's panel builders share no typed base class beyond cogbuilder.Builder


# ---------------------------------------------------------------------------------------------
# Query helpers
# ---------------------------------------------------------------------------------------------


def sel(metric: str, *matchers: str) -> str:
    """``metric{job="$job", instance=~"$instance", <matchers>}``."""
    return metric + "{" + ", ".join([*matchers, SCOPE]) + "}"


def review_sel(metric: str, *matchers: str) -> str:
    """``metric{job="$review_job", <matchers>}``: a series of the review console."""
    return metric + "{" + ", ".join([*matchers, REVIEW_SCOPE]) + "}"


def rate(metric: str, *matchers: str, window: str = RATE) -> str:
    return f"rate({sel(metric, *matchers)}[{window}])"


def quantile(q: float, metric: str, by: str = "") -> str:
    """histogram_quantile over a dknn histogram, aggregated across the selected instances."""
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) ({rate(metric + '_bucket')}))"


def target(expr: str, legend: str, ref: str, *, instant: bool = False, fmt: pm.PromQueryFormat | None = None) -> Any:
    query = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
    query = query.instant() if instant else query.range()
    if fmt:
        query = query.format(fmt)
    return query


def add_targets(panel: PanelBuilder, queries: Sequence[tuple[str, str]], **kw: Any) -> PanelBuilder:
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(target(expr, legend, chr(ord("A") + i), **kw))
    return panel


def thresholds(*steps: tuple[float | None, str]) -> Any:
    return (
        db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


def value_map(mapping: dict[str, tuple[str, str]]) -> list[Any]:
    return [
        dm.ValueMap(
            options={
                k: dm.ValueMappingResult(text=t, color=c, index=i) for i, (k, (t, c)) in enumerate(mapping.items())
            }
        )
    ]


def common_panel(panel: PanelBuilder, pid: int, title: str, description: str, w: int, h: int) -> PanelBuilder:
    return panel.id(pid).title(title).description(description).datasource(DS).span(w).height(h)


# ---------------------------------------------------------------------------------------------
# Panel kinds
# ---------------------------------------------------------------------------------------------


def ts_panel(
    pid: int,
    title: str,
    description: str,
    queries: Sequence[tuple[str, str]],
    *,
    unit: str = "short",
    axis_label: str = "",
    w: int = 12,
    h: int = 8,
    min_: float | None = 0,
    max_: float | None = None,
    stack: cm.StackingMode | None = None,
    bars: bool = False,
    legend_calcs: Sequence[str] = ("mean", "max", "lastNotNull"),
    decorate: Callable[[PanelBuilder], PanelBuilder] | None = None,
) -> PanelBuilder:
    panel = common_panel(timeseries.Panel(), pid, title, description, w, h).unit(unit)
    panel = panel.line_width(1).fill_opacity(10 if not bars else 80).show_points(cm.VisibilityMode.NEVER)
    panel = panel.legend(
        cb.VizLegendOptions()
        .display_mode(cm.LegendDisplayMode.TABLE)
        .placement(cm.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(list(legend_calcs))
    ).tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    if axis_label:
        panel = panel.axis_label(axis_label)
    if min_ is not None:
        panel = panel.min(min_)
    if max_ is not None:
        panel = panel.max(max_)
    if stack is not None:
        panel = panel.stacking(cb.StackingConfig().mode(stack).group("A"))
    if bars:
        panel = panel.draw_style(cm.GraphDrawStyle.BARS)
    panel = add_targets(panel, queries)
    return decorate(panel) if decorate else panel


def stat_panel(
    pid: int,
    title: str,
    description: str,
    queries: Sequence[tuple[str, str]],
    *,
    unit: str = "short",
    steps: Sequence[tuple[float | None, str]] = ((None, GREEN),),
    mappings: dict[str, tuple[str, str]] | None = None,
    w: int = 3,
    h: int = 4,
    decimals: int | None = None,
    text_mode: cm.BigValueTextMode = cm.BigValueTextMode.AUTO,
) -> PanelBuilder:
    panel = common_panel(stat.Panel(), pid, title, description, w, h).unit(unit)
    panel = (
        panel.thresholds(thresholds(*steps))
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.AREA)
        .text_mode(text_mode)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    if mappings:
        panel = panel.mappings(value_map(mappings))
    return add_targets(panel, queries)


def state_panel(
    pid: int,
    title: str,
    description: str,
    queries: Sequence[tuple[str, str]],
    mapping: dict[str, tuple[str, str]],
    *,
    w: int = 12,
    h: int = 6,
) -> PanelBuilder:
    panel = common_panel(statetimeline.Panel(), pid, title, description, w, h)
    panel = (
        panel.mappings(value_map(mapping))
        .thresholds(thresholds((None, BLUE)))
        .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
        .show_value(cm.VisibilityMode.NEVER)
        .merge_values(True)
        .row_height(0.8)
        .fill_opacity(80)
        .line_width(0)
        .legend(
            cb.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.SINGLE).sort(cm.SortOrder.NONE))
    )
    return add_targets(panel, queries)


def heatmap_panel(pid: int, title: str, description: str, metric: str, *, w: int = 12, h: int = 9) -> PanelBuilder:
    """A heatmap of a dknn histogram's buckets (per-interval counts, not cumulative)."""
    panel = common_panel(heatmap.Panel(), pid, title, description, w, h)
    panel = (
        panel.calculate(False)
        .color(
            heatmap.HeatmapColorOptions()
            .mode(hm.HeatmapColorMode.SCHEME)
            .scheme("Spectral")
            .scale(hm.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
            .reverse(True)
            .fill("dark-orange")
        )
        .y_axis(heatmap.YAxisConfig().unit("none").decimals(2).min(0).max(1))
        .cell_values(heatmap.CellValues().unit("short"))
        .rows_frame(heatmap.RowsHeatmapOptions().layout(cm.HeatmapCellLayout.LE).value("events"))
        .show_legend()
        .mode(cm.TooltipDisplayMode.SINGLE)
        .show_y_histogram()
        .show_color_scale(True)
    )
    expr = f"sum by (le) (increase({sel(metric + '_bucket')}[{RATE}]))"
    return panel.with_target(target(expr, "{{le}}", "A", fmt=pm.PromQueryFormat.HEATMAP))


def info_table(
    pid: int, title: str, description: str, expr: str, columns: dict[str, str], *, w: int = 12, h: int = 7
) -> PanelBuilder:
    """One row per series of an instant query; ``columns`` maps label -> header, in order."""
    panel = common_panel(table.Panel(), pid, title, description, w, h)
    order = {name: i for i, name in enumerate(columns)}
    panel = panel.with_transformation(
        dm.DataTransformerConfig(
            id_val="organize",
            options={
                "excludeByName": {"Time": True, "Value": True, "__name__": True, "job": True},
                "indexByName": order,
                "renameByName": columns,
            },
        )
    ).cell_height(cm.TableCellHeight.SM)
    return panel.with_target(target(expr, "__auto", "A", instant=True, fmt=pm.PromQueryFormat.TABLE))


def bars_right(ref: str, color: str) -> Callable[[PanelBuilder], PanelBuilder]:
    """Draw one query's series as bars on a right-hand axis (event counts next to a level)."""

    def apply(panel: PanelBuilder) -> PanelBuilder:
        return panel.override_by_query(
            ref,
            [
                dm.DynamicConfigValue(id_val="custom.drawStyle", value="bars"),
                dm.DynamicConfigValue(id_val="custom.fillOpacity", value=80),
                dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                dm.DynamicConfigValue(id_val="custom.axisLabel", value="alarms"),
                dm.DynamicConfigValue(id_val="unit", value="short"),
                dm.DynamicConfigValue(id_val="decimals", value=0),
                dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color}),
            ],
        )

    return apply


def right_axis(ref: str, label: str, color: str) -> Callable[[PanelBuilder], PanelBuilder]:
    """Draw one query's series as a dashed line on a right-hand axis (a rate next to a share)."""

    def apply(panel: PanelBuilder) -> PanelBuilder:
        return panel.override_by_query(
            ref,
            [
                dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
                dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
                dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                dm.DynamicConfigValue(id_val="custom.axisLabel", value=label),
                dm.DynamicConfigValue(id_val="unit", value="short"),
                dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color}),
            ],
        )

    return apply


def fixed_colors(colors: dict[str, str]) -> Callable[[PanelBuilder], PanelBuilder]:
    """A fixed colour per series name (legend)."""

    def apply(panel: PanelBuilder) -> PanelBuilder:
        for name, color in colors.items():
            panel = panel.override_by_name(
                name, [dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color})]
            )
        return panel

    return apply


def dashed(ref: str, color: str) -> Callable[[PanelBuilder], PanelBuilder]:
    """A reference line (threshold, bound): dashed, fixed colour, no fill."""

    def apply(panel: PanelBuilder) -> PanelBuilder:
        return panel.override_by_query(
            ref,
            [
                dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
                dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
                dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color}),
            ],
        )

    return apply


# ---------------------------------------------------------------------------------------------
# Shared panel definitions (used on both dashboards with different ids and sizes)
# ---------------------------------------------------------------------------------------------

READY_MAP = {"0": ("not ready", RED), "1": ("ready", GREEN)}
UP_MAP = {"0": ("down", RED), "1": ("up", GREEN)}
SHIFT_MAP = {"0": ("normal", GREEN), "1": ("shifted", RED)}
QUARANTINED = 'verdict="quarantined"'

QUARANTINED_SHARE = f"sum({rate('dknn_events_scored_total', QUARANTINED)}) / sum({rate('dknn_events_scored_total')})"
DEAD_LETTERED_SHARE = f"sum({rate('dknn_events_dead_lettered_total')}) / sum({rate('dknn_events_consumed_total')})"
MEAN_CREDIBILITY = f"sum({rate('dknn_credibility_sum')}) / sum({rate('dknn_credibility_count')})"
DISAGREEMENT_RATE = f"sum({rate('dknn_model_disagreements_total')}) / sum({rate('dknn_predictions_total')})"
# No sample, not NaN, while nothing is compared (events without the server's answer).
SERVED_MISMATCH_SHARE = (
    f"sum({rate('dknn_served_answer_mismatches_total')}) / (sum({rate('dknn_served_answers_compared_total')}) > 0)"
)


def events_by_outcome(pid: int, *, w: int = 12, h: int = 8) -> PanelBuilder:
    return ts_panel(
        pid,
        "Events per second by outcome",
        "In: records consumed. Out: valid events scored (accepted, or quarantined because credibility < threshold), "
        "invalid events dead-lettered, by reason, and records for another model skipped without output "
        "(unknown_model: skip). With one input per record, consumed = accepted + quarantined + dead-lettered + "
        "skipped; a batch request scores one event per row, and an inference response none (its answer is "
        "compared with the request's).",
        [
            (f"sum({rate('dknn_events_consumed_total')})", "consumed"),
            (f"sum by (verdict) ({rate('dknn_events_scored_total')})", "scored {{verdict}}"),
            (f"sum by (reason) ({rate('dknn_events_dead_lettered_total')}) > 0", "dead-lettered {{reason}}"),
            (f"sum by (reason) ({rate('dknn_events_skipped_total')}) > 0", "skipped {{reason}}"),
        ],
        axis_label="events / s",
        w=w,
        h=h,
        decorate=lambda p: (
            p.override_by_name(
                "consumed",
                [
                    dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
                    dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
                    dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "text"}),
                ],
            )
            .override_by_name(
                "scored accepted", [dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": GREEN})]
            )
            .override_by_name(
                "scored quarantined",
                [dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": ORANGE})],
            )
        ),
    )


def consumer_lag_by_topic(pid: int, *, w: int = 12, h: int = 8) -> PanelBuilder:
    return ts_panel(
        pid,
        "Consumer lag by topic",
        "Messages behind the high-water mark, summed over the partitions the selected replicas own "
        "(a revoked partition's series is dropped, so a rebalance does not double-count).",
        [(f"sum by (topic) ({sel('dknn_consumer_lag_messages')})", "{{topic}}")],
        axis_label="messages",
        w=w,
        h=h,
    )


def credibility_heatmap(pid: int, *, w: int = 12, h: int = 9) -> PanelBuilder:
    return heatmap_panel(
        pid,
        "Credibility distribution",
        "Scored events per credibility bucket (dknn_credibility histogram, buckets 0.01 … 1.0). Clean traffic spreads "
        "over the whole range; shifted, noisy or adversarial traffic piles up in the lowest buckets.",
        "dknn_credibility",
        w=w,
        h=h,
    )


def mean_credibility(pid: int, *, per_instance: bool = False, w: int = 12, h: int = 9) -> PanelBuilder:
    queries = [(MEAN_CREDIBILITY, "mean credibility")]
    if per_instance:
        queries.append(
            (
                f"sum by (instance) ({rate('dknn_credibility_sum')}) / sum by (instance) ({rate('dknn_credibility_count')})",
                "{{instance}}",
            )
        )
    return ts_panel(
        pid,
        "Mean credibility",
        "Mean credibility of the events scored in each interval (histogram _sum / _count).",
        queries,
        unit="none",
        min_=0,
        max_=1,
        w=w,
        h=h,
    )


def drift_state(pid: int, *, w: int = 12, h: int = 6) -> PanelBuilder:
    return state_panel(
        pid,
        "Traffic shifted (state detector)",
        "dknn_drift_shifted per replica: 1 while the share of low-credibility events in the recent window is above "
        "its calibrated upper bound (traffic currently shifted), 0 otherwise.",
        [(f"max by (instance) ({sel('dknn_drift_shifted')})", "{{instance}}")],
        SHIFT_MAP,
        w=w,
        h=h,
    )


def drift_window_ratio(pid: int, *, w: int = 12, h: int = 8) -> PanelBuilder:
    return ts_panel(
        pid,
        "Low-credibility share vs calibrated bound",
        "State drift signal per replica: the share of low-credibility events in the detector's window "
        "(solid) against its calibrated upper bound (dashed). Above the bound = traffic shifted.",
        [
            (f"max by (instance) ({sel('dknn_drift_window_low_credibility_ratio')})", "{{instance}} share"),
            (f"max by (instance) ({sel('dknn_drift_window_low_credibility_bound')})", "{{instance}} bound"),
        ],
        unit="percentunit",
        max_=1,
        w=w,
        h=h,
        decorate=dashed("B", RED),
    )


def drift_change(pid: int, *, w: int = 12, h: int = 8) -> PanelBuilder:
    return ts_panel(
        pid,
        "Distribution change: statistic vs threshold (log10)",
        "Change drift signal per replica: the change detector's statistic (log10) against its alarm threshold "
        "(dashed); bars count change alarms (dknn_drift_change_total) in each interval.",
        [
            (f"max by (instance) ({sel('dknn_drift_change_statistic_log10')})", "{{instance}} statistic"),
            (f"max by (instance) ({sel('dknn_drift_change_threshold_log10')})", "{{instance}} threshold"),
            (f"sum by (instance) (increase({sel('dknn_drift_change_total')}[{RATE}]))", "{{instance}} alarms"),
        ],
        unit="none",
        axis_label="log10",
        min_=None,
        w=w,
        h=h,
        decorate=lambda p: bars_right("C", PURPLE)(dashed("B", RED)(p)),
    )


def quarantine_and_dead_letter(pid: int, *, w: int = 12, h: int = 8) -> PanelBuilder:
    return ts_panel(
        pid,
        "Quarantined and dead-lettered per second",
        "What leaves the normal path: events quarantined for low credibility, and invalid events dead-lettered by "
        "reason (too_large, bad_json, schema, unknown_model, dtype, shape, non_finite, out_of_range, undeliverable, "
        "other).",
        [
            (f"sum({rate('dknn_events_scored_total', QUARANTINED)})", "quarantined"),
            (f"sum by (reason) ({rate('dknn_events_dead_lettered_total')}) > 0", "dead-lettered {{reason}}"),
        ],
        axis_label="events / s",
        stack=cm.StackingMode.NORMAL,
        bars=True,
        w=w,
        h=h,
        decorate=lambda p: p.override_by_name(
            "quarantined", [dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": ORANGE})]
        ),
    )


def quarantine_share(pid: int, *, w: int = 12, h: int = 8) -> PanelBuilder:
    return ts_panel(
        pid,
        "Quarantined share of scored events",
        "Share of scored events quarantined in each interval, and per replica the share below the threshold among "
        "its last 100 and 1000 scored events. On traffic like the calibration data this stays near the threshold "
        "(the conformal guarantee); far above it means shifted or attacked traffic.",
        [
            (QUARANTINED_SHARE, "quarantined share"),
            (f"max by (instance, window) ({sel('dknn_low_credibility_ratio')})", "{{instance}} last {{window}}"),
        ],
        unit="percentunit",
        max_=1,
        w=w,
        h=h,
    )


def dead_letter_by_reason(pid: int, *, w: int = 12, h: int = 8) -> PanelBuilder:
    return ts_panel(
        pid,
        "Dead-lettered per second by reason",
        "Invalid events routed to the dead-letter topic, by reason (the closed set of docs/design.md §4, "
        "plus undeliverable and other).",
        [(f"sum by (reason) ({rate('dknn_events_dead_lettered_total')})", "{{reason}}")],
        axis_label="events / s",
        stack=cm.StackingMode.NORMAL,
        bars=True,
        w=w,
        h=h,
    )


def label_mix(pid: int, *, w: int = 12, h: int = 8) -> PanelBuilder:
    return ts_panel(
        pid,
        "Predicted-label mix",
        "Share of DkNN predictions per class label. A sudden change of mix is a shift symptom even when credibility "
        "stays high.",
        [(f"sum by (label) ({rate('dknn_predictions_total')})", "{{label}}")],
        unit="percentunit",
        stack=cm.StackingMode.PERCENT,
        legend_calcs=("mean", "lastNotNull"),
        w=w,
        h=h,
        decorate=lambda p: p.fill_opacity(60),
    )


def disagreement_rate(pid: int, *, per_instance: bool = False, w: int = 12, h: int = 8) -> PanelBuilder:
    queries = [(DISAGREEMENT_RATE, "all replicas")]
    if per_instance:
        queries.append(
            (
                f"sum by (instance) ({rate('dknn_model_disagreements_total')}) / "
                f"sum by (instance) ({rate('dknn_predictions_total')})",
                "{{instance}}",
            )
        )
    return ts_panel(
        pid,
        "Model disagreement rate",
        "Share of scored events where the DkNN prediction differs from the model's own prediction.",
        queries,
        unit="percentunit",
        w=w,
        h=h,
    )


SERVED_MISMATCH_MEANING = (
    "A served answer is the class the model server returned (a v1 event's prediction.label, or an inference "
    "response sharing its request's id, as KServe's payload logger writes them); the agent compares it with the "
    "class its bundle's model gives for the same input. They should agree: numerics (another device or dtype) "
    "may flip a rare near-tie, but a lasting share above that means version skew, the server runs another model "
    "version than the bundle, and every credibility the agent reports is about the wrong model "
    "(DknnServedAnswerMismatch)."
)


def served_mismatch_share(pid: int, *, per_instance: bool = False, w: int = 12, h: int = 8) -> PanelBuilder:
    """The share of compared served answers that differ; on the overview with the compared rate beside it."""
    queries = [(SERVED_MISMATCH_SHARE, "mismatch share")]
    if per_instance:
        queries.append(
            (
                f"sum by (instance) ({rate('dknn_served_answer_mismatches_total')}) / "
                f"(sum by (instance) ({rate('dknn_served_answers_compared_total')}) > 0)",
                "{{instance}}",
            )
        )
        extra = " Per replica: a share on only some replicas points at the producers keyed to the partitions they own."
    else:
        queries.append((f"sum({rate('dknn_served_answers_compared_total')})", "compared / s"))
        extra = (
            " Dashed, right axis: served answers compared per second. What to do: compare the server's model "
            "version with the bundle's (Bundle served per instance), look for a canary (a share near its traffic "
            "percentage), then refit the bundle from the served model or roll the server back. No share line: "
            "nothing was compared (the events carry no served answer)."
        )
    return ts_panel(
        pid,
        "Served-answer mismatch share",
        "Share of the served answers compared in each interval that differ from the answer the agent recomputes "
        "(dknn_served_answer_mismatches_total / dknn_served_answers_compared_total). "
        + SERVED_MISMATCH_MEANING
        + extra,
        queries,
        unit="percentunit",
        w=w,
        h=h,
        decorate=None if per_instance else right_axis("B", "compared / s", BLUE),
    )


def event_latency(pid: int, *, w: int = 12, h: int = 8) -> PanelBuilder:
    return ts_panel(
        pid,
        "End-to-end event latency",
        "now − event timestamp_ms when the event is accounted (after its outputs are confirmed): p50, p95, p99 over "
        "the selected replicas (dknn_event_latency_seconds).",
        [(quantile(q, "dknn_event_latency_seconds"), f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)],
        unit="s",
        w=w,
        h=h,
    )


def stage_latency(pid: int, q: float, *, w: int = 12, h: int = 8) -> PanelBuilder:
    return ts_panel(
        pid,
        f"Stage duration p{round(q * 100)} by stage",
        "Per micro-batch duration of each stage (poll, decode, activations, knn, score, encode, produce, commit), "
        f"{round(q * 100)}th percentile over the selected replicas (dknn_stage_duration_seconds).",
        [(quantile(q, "dknn_stage_duration_seconds", by="stage"), "{{stage}}")],
        unit="s",
        w=w,
        h=h,
    )


def bundle_table(pid: int, *, w: int = 12, h: int = 7) -> PanelBuilder:
    return info_table(
        pid,
        "Bundle served per instance",
        "dknn_bundle_info of every replica. All replicas of one job should serve the same model and version "
        "(DknnModelVersionMismatch fires otherwise).",
        f"max by (instance, model, version, k, layers, index, calibration_size) ({sel('dknn_bundle_info')})",
        {
            "instance": "instance",
            "model": "model",
            "version": "model version",
            "k": "k",
            "layers": "layers",
            "index": "index",
            "calibration_size": "calibration size",
        },
        w=w,
        h=h,
    )


def outputs_refused(pid: int, *, w: int = 12, h: int = 8) -> PanelBuilder:
    return ts_panel(
        pid,
        "Outputs refused and commits rejected",
        "Records a sink refused for good and replaced by their fallback, per output; and offset commits refused "
        "after a rebalance (the batch went to the partition's new owner). Both should stay at zero.",
        [
            (f"sum by (output) (increase({sel('dknn_outputs_refused_total')}[{RATE}]))", "refused {{output}}"),
            (f"sum(increase({sel('dknn_commits_rejected_total')}[{RATE}]))", "commits rejected"),
        ],
        axis_label="per interval",
        bars=True,
        legend_calcs=("sum", "max"),
        w=w,
        h=h,
    )


def readiness(pid: int, *, w: int = 12, h: int = 6) -> PanelBuilder:
    return state_panel(
        pid,
        "Readiness per instance",
        "dknn_ready: 1 once the bundle is loaded and a poll found partitions assigned (what /readyz reports). "
        "A replica with no partitions (more replicas than partitions) stays not ready.",
        [(f"max by (instance) ({sel('dknn_ready')})", "{{instance}}")],
        READY_MAP,
        w=w,
        h=h,
    )


def reviews_by_verdict(pid: int, *, w: int = 12, h: int = 8) -> PanelBuilder:
    return ts_panel(
        pid,
        "Reviews per verdict",
        "Reviews recorded per second by the review console, by verdict: model_right (the quarantine was a "
        "false alarm), model_wrong (it caught a mistake), out_of_scope (an input the model was never meant "
        "to judge). dknn_reviews_total of the job $review_job.",
        [(f"sum by (verdict) (rate({review_sel('dknn_reviews_total')}[{RATE}]))", "{{verdict}}")],
        axis_label="reviews / s",
        stack=cm.StackingMode.NORMAL,
        bars=True,
        decorate=fixed_colors({"model_right": ORANGE, "model_wrong": GREEN, "out_of_scope": PURPLE}),
        w=w,
        h=h,
    )


def review_coverage(pid: int, *, w: int = 4, h: int = 8) -> PanelBuilder:
    return stat_panel(
        pid,
        "Review coverage",
        "Share of the quarantined events the console holds that someone has reviewed "
        "(dknn_review_coverage_ratio). Low: reviewers are behind, and extend has little to learn from.",
        [(f"max({review_sel('dknn_review_coverage_ratio')})", "reviewed")],
        unit="percentunit",
        steps=((None, RED), (0.2, ORANGE), (0.5, GREEN)),
        decimals=1,
        w=w,
        h=h,
    )


def quarantine_precision(pid: int, *, w: int = 4, h: int = 8) -> PanelBuilder:
    return stat_panel(
        pid,
        "Quarantine precision",
        "Of the reviewed quarantined events, the share reviewers judged real problems rather than false alarms "
        "(dknn_quarantine_precision_ratio). Low: the threshold quarantines mostly inputs the model got right.",
        [(f"max({review_sel('dknn_quarantine_precision_ratio')})", "precision")],
        unit="percentunit",
        steps=((None, RED), (0.3, ORANGE), (0.6, GREEN)),
        decimals=1,
        w=w,
        h=h,
    )


def console_events(pid: int, *, w: int = 4, h: int = 8) -> PanelBuilder:
    return stat_panel(
        pid,
        "Quarantined events in the console",
        "Quarantined events the review console holds, reviewed or not (dknn_review_console_events).",
        [(f"max({review_sel('dknn_review_console_events')})", "events")],
        steps=((None, BLUE),),
        decimals=0,
        w=w,
        h=h,
    )


def review_latency(pid: int, *, w: int = 12, h: int = 8) -> PanelBuilder:
    return ts_panel(
        pid,
        "Review latency",
        "Time from an event's quarantine to its review, p50 and p95 of the reviews recorded in each interval "
        "(dknn_review_latency_seconds).",
        [
            (
                f"histogram_quantile({q}, sum by (le) (rate({review_sel('dknn_review_latency_seconds_bucket')}[{RATE}])))",
                f"p{round(q * 100)}",
            )
            for q in (0.5, 0.95)
        ],
        unit="s",
        w=w,
        h=h,
    )


def review_ratios(pid: int, *, w: int = 12, h: int = 8) -> PanelBuilder:
    return ts_panel(
        pid,
        "Review coverage and quarantine precision over time",
        "The two ratios of the stat panels above, over the dashboard's time range.",
        [
            (f"max({review_sel('dknn_review_coverage_ratio')})", "coverage"),
            (f"max({review_sel('dknn_quarantine_precision_ratio')})", "precision"),
        ],
        unit="percentunit",
        max_=1,
        w=w,
        h=h,
    )


def console_records_skipped(pid: int, *, w: int = 24, h: int = 7) -> PanelBuilder:
    return ts_panel(
        pid,
        "Records the console skipped",
        "Quarantine and review records the console could not use (not JSON, not the expected shape, another "
        "model's), per interval, by topic and reason (dknn_review_console_records_skipped_total). They are "
        "left out of the console, never a crash; steady counts mean a producer writes something else there.",
        [
            (
                f"sum by (topic, reason) (increase({review_sel('dknn_review_console_records_skipped_total')}[{RATE}]))",
                "{{topic}} {{reason}}",
            )
        ],
        axis_label="per interval",
        bars=True,
        legend_calcs=("sum", "max"),
        w=w,
        h=h,
    )


# ---------------------------------------------------------------------------------------------
# Dashboards
# ---------------------------------------------------------------------------------------------


def variables(*, review: bool = False) -> list[Any]:
    """The data source, the agent's job and its instances; with `review`, also the review console's job."""
    chosen = [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        db.QueryVariable("job")
        .label("Job")
        .description("The agent deployment (its replicas share one consumer group).")
        .datasource(DS)
        .query(f"label_values({AGENT_SERIES}, job)")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC),
        db.QueryVariable("instance")
        .label("Instance")
        .description("Replicas of the job.")
        .datasource(DS)
        .query(f'label_values({AGENT_SERIES}{{job="$job"}}, instance)')
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".+")
        .current(dm.VariableOption(text="All", value="$__all", selected=True)),
    ]
    if review:
        chosen.append(
            db.QueryVariable("review_job")
            .label("Review console")
            .description("The review console (dknn-agent review): a scrape job of its own.")
            .datasource(DS)
            .query("label_values(dknn_review_console_events, job)")
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
        )
    return chosen


def alert_annotations() -> list[Any]:
    return [
        db.AnnotationQuery()
        .name("Distribution shift alerts")
        .datasource(DS)
        .enable(True)
        .icon_color(PURPLE)
        .expr(f'ALERTS{{alertname=~"Dknn.*", alertname=~"{SHIFT_ALERTS}", {ALERT_SCOPE}}}'),
        db.AnnotationQuery()
        .name("Other dknn alerts")
        .datasource(DS)
        .enable(True)
        .icon_color(RED)
        .expr(f'ALERTS{{alertname=~"Dknn.*", alertname!~"{SHIFT_ALERTS}", {ALERT_SCOPE}}}'),
    ]


def links(other_title: str) -> list[Any]:
    return [
        db.DashboardLink(other_title)
        .type(dm.DashboardLinkType.DASHBOARDS)
        .tags(["dknn"])
        .as_dropdown(False)
        .include_vars(True)
        .keep_time(True)
        .target_blank(False)
        .icon("dashboard")
        .tooltip("")
        .url("")
    ]


def base(uid: str, title: str, description: str, other: str, *, review: bool = False) -> Any:
    d = (
        db.Dashboard(title)
        .uid(uid)
        .version(DASHBOARD_VERSION)
        .description(description)
        .tags(TAGS)
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .links(links(other))
    )
    for v in variables(review=review):
        d = d.with_variable(v)
    for a in alert_annotations():
        d = d.annotation(a)
    return d


def row(pid: int, title: str) -> Any:
    return db.Row(title).id(pid).collapsed(False)


def overview() -> Any:
    d = base(
        OVERVIEW_UID,
        "dknn-agent / Overview",
        "On-call view of the DkNN monitoring agent: health, traffic, shift, quarantine. Generated by "
        "dashboards/grafana/generate.py: edit the generator, not this JSON.",
        "dknn-agent / Detail",
        review=True,
    )
    ready_up = (
        f"(count({sel('up')} == 0) or vector(0)) + (count({sel('dknn_ready')} == 0) or vector(0))",
        "down or not ready",
    )
    d = (
        d.with_row(row(1, "Health"))
        .with_panel(
            stat_panel(
                2,
                "Replicas ready",
                "Replicas reporting dknn_ready = 1, and replicas Prometheus scrapes successfully (up).",
                [(f"sum({sel('dknn_ready')})", "ready"), (f"sum({sel('up')})", "up")],
                steps=((None, BLUE),),
                text_mode=cm.BigValueTextMode.VALUE_AND_NAME,
                decimals=0,
                w=4,
            )
        )
        .with_panel(
            stat_panel(
                3,
                "Down or not ready",
                "Replicas that are down (up = 0) or not ready (dknn_ready = 0). See DknnAgentDown / DknnAgentNotReady.",
                [ready_up],
                steps=((None, GREEN), (1, RED)),
                decimals=0,
            )
        )
        .with_panel(
            stat_panel(
                4,
                "Traffic shifted",
                "Whether any selected replica's state detector currently sees shifted traffic (dknn_drift_shifted).",
                [(f"max({sel('dknn_drift_shifted')})", "shifted")],
                steps=((None, GREEN), (1, RED)),
                mappings=SHIFT_MAP,
            )
        )
        .with_panel(
            stat_panel(
                5,
                "Consumed",
                "Records consumed per second over the selected replicas.",
                [(f"sum({rate('dknn_events_consumed_total')})", "events/s")],
                unit="short",
                steps=((None, BLUE),),
                decimals=1,
            )
        )
        .with_panel(
            stat_panel(
                6,
                "Quarantined",
                "Share of scored events quarantined (credibility below the threshold).",
                [(QUARANTINED_SHARE, "quarantined")],
                unit="percentunit",
                steps=((None, GREEN), (0.2, ORANGE), (0.5, RED)),
                decimals=1,
            )
        )
        .with_panel(
            stat_panel(
                7,
                "Dead-lettered",
                "Share of consumed records dead-lettered as invalid.",
                [(DEAD_LETTERED_SHARE, "dead-lettered")],
                unit="percentunit",
                steps=((None, GREEN), (0.01, ORANGE), (0.1, RED)),
                decimals=2,
            )
        )
        .with_panel(
            stat_panel(
                8,
                "Consumer lag",
                "Messages behind, summed over all partitions the selected replicas own.",
                [(f"sum({sel('dknn_consumer_lag_messages')})", "messages")],
                steps=((None, BLUE),),
                decimals=0,
            )
        )
        .with_panel(
            stat_panel(
                9,
                "Firing alerts",
                "Dknn* alerts firing now for this job (or with no job label).",
                [(f'count(ALERTS{{alertname=~"Dknn.*", {ALERT_SCOPE}}}) or vector(0)', "firing")],
                steps=((None, GREEN), (1, RED)),
                decimals=0,
                w=2,
            )
        )
        .with_row(row(10, "Traffic"))
        .with_panel(events_by_outcome(11))
        .with_panel(consumer_lag_by_topic(12))
        .with_row(row(20, "Credibility and distribution shift"))
        .with_panel(credibility_heatmap(21))
        .with_panel(mean_credibility(22))
        .with_panel(drift_state(23, w=24, h=5))
        .with_panel(drift_window_ratio(24))
        .with_panel(drift_change(25))
        .with_row(row(30, "Quarantine, dead letters and predictions"))
        .with_panel(quarantine_share(31))
        .with_panel(quarantine_and_dead_letter(32))
        .with_panel(label_mix(33, w=16))
        .with_panel(disagreement_rate(34, w=8))
        .with_row(row(40, "Latency"))
        .with_panel(event_latency(41))
        .with_panel(stage_latency(42, 0.95))
        .with_row(row(50, "Model, delivery and readiness"))
        .with_panel(bundle_table(51, w=12, h=8))
        .with_panel(served_mismatch_share(54))
        .with_panel(outputs_refused(52, w=12, h=8))
        .with_panel(readiness(53, w=12, h=8))
        .with_row(row(60, "Review"))
        .with_panel(review_coverage(61))
        .with_panel(quarantine_precision(62))
        .with_panel(console_events(63))
        .with_panel(reviews_by_verdict(64))
        .with_panel(review_latency(65))
        .with_panel(review_ratios(66))
        .with_panel(console_records_skipped(67))
    )
    return d


def detail() -> Any:
    d = base(
        DETAIL_UID,
        "dknn-agent / Detail",
        "Per-instance, per-partition, per-stage detail of the DkNN monitoring agent. Generated by "
        "dashboards/grafana/generate.py: edit the generator, not this JSON.",
        "dknn-agent / Overview",
    )
    d = (
        d.with_row(row(100, "Throughput"))
        .with_panel(events_by_outcome(101, w=24))
        .with_panel(
            ts_panel(
                102,
                "Consumed per instance",
                "Records consumed per second by each replica.",
                [(f"sum by (instance) ({rate('dknn_events_consumed_total')})", "{{instance}}")],
                axis_label="events / s",
            )
        )
        .with_panel(
            ts_panel(
                103,
                "Scored per instance by verdict",
                "Valid events scored per second by each replica, accepted and quarantined.",
                [(f"sum by (instance, verdict) ({rate('dknn_events_scored_total')})", "{{instance}} {{verdict}}")],
                axis_label="events / s",
            )
        )
        .with_panel(dead_letter_by_reason(104))
        .with_panel(
            ts_panel(
                105,
                "Skipped per second by reason",
                "Records skipped without any output, by reason. unknown_model: a record for another model on a "
                "topic several models share, skipped because the setting unknown_model is skip (with dead_letter "
                "it is dead-lettered instead). Steady on a shared topic; a jump or a drop to zero means a "
                "producer changed the model name it sends.",
                [(f"sum by (reason) ({rate('dknn_events_skipped_total')})", "{{reason}}")],
                axis_label="records / s",
                stack=cm.StackingMode.NORMAL,
                bars=True,
            )
        )
        .with_row(row(110, "Consumer lag"))
        .with_panel(
            ts_panel(
                111,
                "Consumer lag by topic and partition",
                "Messages behind per partition (the owner's view: high-water mark of its last fetch − next offset).",
                [(f"max by (topic, partition) ({sel('dknn_consumer_lag_messages')})", "{{topic}}/{{partition}}")],
                axis_label="messages",
            )
        )
        .with_panel(
            ts_panel(
                112,
                "Consumer lag by instance",
                "Messages behind, summed over the partitions each replica owns. An idle replica owns no partition.",
                [(f"sum by (instance) ({sel('dknn_consumer_lag_messages')})", "{{instance}}")],
                axis_label="messages",
            )
        )
        .with_row(row(120, "Credibility and confidence"))
        .with_panel(credibility_heatmap(121))
        .with_panel(mean_credibility(122, per_instance=True))
        .with_panel(
            ts_panel(
                123,
                "Credibility quantiles",
                "p10, p50 and p90 of credibility over the selected replicas, from the histogram buckets.",
                [(quantile(q, "dknn_credibility"), f"p{round(q * 100)}") for q in (0.1, 0.5, 0.9)],
                unit="none",
                max_=1,
            )
        )
        .with_panel(quarantine_share(124))
        .with_panel(
            heatmap_panel(
                125,
                "Confidence distribution",
                "Scored events per confidence bucket (dknn_confidence histogram).",
                "dknn_confidence",
            )
        )
        .with_panel(
            ts_panel(
                126,
                "Mean confidence",
                "Mean confidence of the events scored in each interval, overall and per replica.",
                [
                    (f"sum({rate('dknn_confidence_sum')}) / sum({rate('dknn_confidence_count')})", "mean confidence"),
                    (
                        f"sum by (instance) ({rate('dknn_confidence_sum')}) / "
                        f"sum by (instance) ({rate('dknn_confidence_count')})",
                        "{{instance}}",
                    ),
                ],
                unit="none",
                max_=1,
                h=9,
            )
        )
        .with_row(row(130, "Distribution shift"))
        .with_panel(drift_state(131, w=24))
        .with_panel(drift_change(132))
        .with_panel(drift_window_ratio(133))
        .with_panel(
            ts_panel(
                134,
                "Change alarms",
                "Distribution-change alarms raised per replica over the dashboard's time range, per interval.",
                [(f"sum by (instance) (increase({sel('dknn_drift_change_total')}[{RATE}]))", "{{instance}}")],
                bars=True,
                legend_calcs=("sum", "max"),
                w=24,
                h=6,
            )
        )
        .with_row(row(140, "Model"))
        .with_panel(label_mix(141))
        .with_panel(disagreement_rate(142, per_instance=True))
        .with_panel(
            ts_panel(
                146,
                "Served answers compared, mismatched and unmatched",
                "Per second over the selected replicas: served answers compared with the recomputed ones, those "
                "that differed (version skew: see Served-answer mismatch share), and requests or responses "
                "forgotten before their other half arrived (unmatched: more were waiting than the agent keeps, or "
                "the other half went to another replica; key a request and its response by the request id so "
                "both land in one partition).",
                [
                    (f"sum({rate('dknn_served_answers_compared_total')})", "compared"),
                    (f"sum({rate('dknn_served_answer_mismatches_total')})", "mismatched"),
                    (f"sum({rate('dknn_served_answers_unmatched_total')})", "unmatched"),
                ],
                axis_label="answers / s",
                decorate=fixed_colors({"compared": BLUE, "mismatched": RED, "unmatched": ORANGE}),
            )
        )
        .with_panel(served_mismatch_share(147, per_instance=True))
        .with_panel(bundle_table(143, w=16))
        .with_panel(
            stat_panel(
                144,
                "Distinct bundles served",
                "Number of distinct (model, version) pairs across the selected replicas: more than one during a "
                "rollout, otherwise a mismatch (DknnModelVersionMismatch).",
                [(f"count(count by (model, version) ({sel('dknn_bundle_info')}))", "bundles")],
                steps=((None, GREEN), (2, ORANGE)),
                decimals=0,
                w=8,
                h=7,
            )
        )
        .with_panel(
            info_table(
                145,
                "Agent build per instance",
                "dknn_build_info: the dknn-agent version and Python of every replica.",
                f"max by (instance, version, python) ({sel('dknn_build_info')})",
                {"instance": "instance", "version": "agent version", "python": "python"},
                w=24,
                h=6,
            )
        )
        .with_row(row(150, "Latency"))
        .with_panel(stage_latency(151, 0.5, w=8))
        .with_panel(stage_latency(152, 0.95, w=8))
        .with_panel(stage_latency(153, 0.99, w=8))
        .with_panel(
            ts_panel(
                154,
                "Time spent per stage",
                "Seconds spent in each stage per second of wall time, summed over the selected replicas "
                "(histogram _sum rate): where the agent's time goes.",
                [(f"sum by (stage) ({rate('dknn_stage_duration_seconds_sum')})", "{{stage}}")],
                unit="percentunit",
                stack=cm.StackingMode.NORMAL,
            )
        )
        .with_panel(
            ts_panel(
                155,
                "Mean stage duration",
                "Mean duration of each stage per micro-batch (histogram _sum / _count).",
                [
                    (
                        f"sum by (stage) ({rate('dknn_stage_duration_seconds_sum')}) / "
                        f"sum by (stage) ({rate('dknn_stage_duration_seconds_count')})",
                        "{{stage}}",
                    )
                ],
                unit="s",
            )
        )
        .with_panel(event_latency(156))
        .with_panel(
            ts_panel(
                157,
                "End-to-end latency p95 per instance",
                "95th percentile of event latency for each replica.",
                [(quantile(0.95, "dknn_event_latency_seconds", by="instance"), "{{instance}}")],
                unit="s",
            )
        )
        .with_row(row(160, "Delivery and readiness"))
        .with_panel(
            ts_panel(
                161,
                "Outputs refused by output",
                "Records a sink refused for good and replaced by their fallback (scores, quarantine, dead_letter).",
                [(f"sum by (output) (increase({sel('dknn_outputs_refused_total')}[{RATE}]))", "{{output}}")],
                bars=True,
                legend_calcs=("sum", "max"),
            )
        )
        .with_panel(
            ts_panel(
                162,
                "Commits rejected per instance",
                "Offset commits refused after a rebalance; the batch went to the partition's new owner.",
                [(f"sum by (instance) (increase({sel('dknn_commits_rejected_total')}[{RATE}]))", "{{instance}}")],
                bars=True,
                legend_calcs=("sum", "max"),
            )
        )
        .with_panel(readiness(163))
        .with_panel(
            state_panel(
                164,
                "Scrape status per instance",
                "up: whether Prometheus could scrape the replica's /metrics (DknnAgentDown).",
                [(f"max by (instance) ({sel('up')})", "{{instance}}")],
                UP_MAP,
            )
        )
    )
    return d


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

#: Prometheus annotation fields Grafana's Prometheus data source reads from the top level of an
#: annotation (the SDK models only ``expr``); see validate.sh for the matching schema allowance.
ANNOTATION_FORMAT = {
    "titleFormat": "{{alertname}}",
    "textFormat": "{{alertstate}} {{severity}} {{instance}}",
    "tagKeys": "alertname,severity,instance",
    "step": "60s",
    "useValueForTime": False,
}


def to_json(builder: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    # The SDK (11.6) writes the interval-variable fields auto/auto_count/auto_min on every variable;
    # they mean nothing on a query or data source variable and Grafana's schema has no such fields.
    for var in data.get("templating", {}).get("list", []):
        if var.get("type") != "interval":
            for key in ("auto", "auto_count", "auto_min"):
                var.pop(key, None)
    # The SDK writes a default table footer; Grafana 12+ replaced it by per-field footers, and its
    # table options no longer have the field.
    for panel in data.get("panels", []):
        if panel.get("type") == "table":
            panel.get("options", {}).pop("footer", None)
    for anno in data.get("annotations", {}).get("list", []):
        if "expr" in anno:
            anno.update(ANNOTATION_FORMAT)
    return data


def render(builder: Any) -> str:
    return json.dumps(to_json(builder), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


DASHBOARDS: dict[str, Callable[[], Any]] = {
    "dknn-overview.json": overview,
    "dknn-detail.json": detail,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs from the generator")
    parser.add_argument("--out", type=Path, default=HERE, help="directory to write to (default: next to this file)")
    args = parser.parse_args(argv)

    stale = []
    for name, build in DASHBOARDS.items():
        path = args.out / name
        text = render(build())
        if args.check:
            current = path.read_text(encoding="utf-8") if path.exists() else ""
            if current != text:
                stale.append(name)
                sys.stdout.writelines(
                    difflib.unified_diff(
                        current.splitlines(keepends=True),
                        text.splitlines(keepends=True),
                        f"{path} (committed)",
                        f"{path} (generated)",
                    )
                )
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"\nstale: {', '.join(stale)}; run: python {Path(__file__).as_posix()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
