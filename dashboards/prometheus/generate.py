#!/usr/bin/env python3
"""Render dashboards/prometheus/rules.yml from its template, rules.yml.in, with the default thresholds.

    python dashboards/prometheus/generate.py          # (re)write rules.yml
    python dashboards/prometheus/generate.py --check  # exit 1, with a diff, if rules.yml is stale
    python dashboards/prometheus/generate.py --set deadLetterRatio=0.1 --out /tmp/rules.yml

The template is rules.yml with `${name}` placeholders for the traffic alerts' thresholds (see its
header). The substitution is plain text, the same one the Helm chart's PrometheusRule template
does with `prometheusRule.thresholds` (`replace "${name}" (toString value)`), so the chart with its
default values ships exactly this file; tests/deploy/test_chart.py checks both that and that
DEFAULTS equal the chart's values.yaml. Standard library only: it runs before any setup.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "rules.yml.in"
RULES = HERE / "rules.yml"

#: The thresholds of the traffic alerts, as the chart's `prometheusRule.thresholds` defaults.
DEFAULTS: dict[str, float | int | str] = {
    "deadLetterRatio": 0.05,
    "deadLetterFor": "10m",
    "lagMessages": 1000,
    "lagGrowingFor": "15m",
    "trafficShiftedFor": "15m",
    "lowCredibilityFor": "10m",
    "servedMismatchRatio": 0.01,
    "servedMismatchFor": "15m",
}

HEADER = (
    "# GENERATED from rules.yml.in by dashboards/prometheus/generate.py with its default thresholds:\n"
    "# edit the template and run `python dashboards/prometheus/generate.py`; never edit this file.\n"
)
PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


def render(thresholds: Mapping[str, float | int | str] = DEFAULTS, template: str | None = None) -> str:
    """The template with every `${name}` of the rules replaced by `thresholds[name]`; a placeholder
    left in the rules (outside comments) or a name the template does not use is an error."""
    text = TEMPLATE.read_text(encoding="utf-8") if template is None else template
    unknown = set(thresholds) - set(PLACEHOLDER.findall(text))
    if unknown:
        raise ValueError(f"thresholds the template does not use: {sorted(unknown)}")
    for name, value in thresholds.items():
        text = text.replace("${" + name + "}", str(value))
    rules = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    missing = sorted(set(PLACEHOLDER.findall(rules)))
    if missing:
        raise ValueError(f"no value for the placeholders {missing}")
    return HEADER + text


def _assignment(text: str) -> tuple[str, float | int | str]:
    name, sep, value = text.partition("=")
    if not sep or name not in DEFAULTS:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME one of {', '.join(DEFAULTS)}")
    for kind in (int, float):
        try:
            return name, kind(value)
        except ValueError:
            pass
    return name, value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if rules.yml differs from the template")
    parser.add_argument("--out", type=Path, default=RULES, help="file to write (default: rules.yml next to this)")
    parser.add_argument(
        "--set", type=_assignment, action="append", default=[], metavar="NAME=VALUE", help="a threshold to change"
    )
    args = parser.parse_args(argv)
    text = render({**DEFAULTS, **dict(args.set)})
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    f"{args.out} (committed)",
                    f"{args.out} (generated)",
                )
            )
            print(f"\nstale: {args.out}; run: python {Path(__file__).as_posix()}", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
