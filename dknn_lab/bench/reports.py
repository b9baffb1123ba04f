"""Where benchmark results go: one JSON file for machines and one Markdown file for people.

A benchmark builds its result as frozen dataclasses, so its report reads named fields and a typo is
a type error rather than a KeyError after an hour of measuring. The JSON keys are the field names,
in field order: tests, docs and older runs read these files, so renaming a field changes the file
format. Three field markers keep the files in the shape they have always had without bending the
types to it:

- `ABSENT_WHEN_NONE`: the key is left out rather than written as null (`recall_at_k` is only
  measured when both backends ran), so "not measured" and "measured as None" stay distinct;
- `INLINE`: a nested result's fields are written into its parent's object (a delay row carries its
  `DelaySummary` flat; a set without labels has no accuracy keys at all);
- `encoded(fn)`: the value is written as `fn(value)` (the options a run used, as the subset of
  fields it has always recorded).

Every Markdown table comes from `table`, with cells formatted by `pct`, `num` and `events`, so the
reports agree on what a missing value and a share look like.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ABSENT_WHEN_NONE: Mapping[str, object] = {"absent_when_none": True}
INLINE: Mapping[str, object] = {"inline": True}
MISSING = "–"  # the cell of a value that was not measured or does not exist


def encoded(encode: Callable[[Any], object]) -> Mapping[str, object]:
    """Field metadata: the field is written to JSON as `encode(value)`."""
    return {"encode": encode}


@dataclass(frozen=True)
class ModelVersion:
    """The bundle a result measured, by its model's name and version."""

    model: str
    version: str


def now() -> str:
    """A result's `created_at`: UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def to_json(value: object) -> Any:
    """JSON data for a result: dataclasses become objects of their fields (markers applied),
    mappings objects, lists and tuples arrays; anything else is left to `json.dumps`."""
    if is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for spec in fields(value):
            item = getattr(value, spec.name)
            if "encode" in spec.metadata:
                item = spec.metadata["encode"](item)
            if item is None and (spec.metadata.get("absent_when_none") or spec.metadata.get("inline")):
                continue
            if spec.metadata.get("inline"):
                out |= to_json(item)
            else:
                out[spec.name] = to_json(item)
        return out
    if isinstance(value, Mapping):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table as lines: the header row, the rule, one line per row. Cells are written with
    `str`, so numbers arrive formatted; a row of another width than the header is a bug in its report."""
    lines = [_cells(headers), "|" + "---|" * len(headers)]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"a row of {len(row)} cells under {len(headers)} headers: {row!r}")
        lines.append(_cells(row))
    return lines


def _cells(row: Sequence[object]) -> str:
    return "| " + " | ".join(str(cell) for cell in row) + " |"


def pct(value: float | None) -> str:
    """A share as a percentage with two decimals: `99.38%`."""
    return MISSING if value is None else f"{100 * value:.2f}%"


def num(value: float | None, digits: int = 3) -> str:
    """A score (AUROC, credibility, recall) with a fixed number of decimals."""
    return MISSING if value is None else f"{value:.{digits}f}"


def events(value: float | None) -> str:
    """A count of events: `1,234`."""
    return MISSING if value is None else f"{value:,.0f}"


def save_report(result: object, text: str, out_dir: Path, stem: str) -> None:
    """Writes OUT/STEM.json (`to_json(result)`) and OUT/STEM.md and prints the Markdown. Names are
    joined, not made with Path.with_suffix: a stem such as "…-T0.1-relu1" contains a dot that is not
    a suffix."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(to_json(result), indent=2) + "\n")
    markdown_path.write_text(text)
    print(text)
    print(f"saved {json_path} and {markdown_path}")
