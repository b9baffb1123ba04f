"""`dknn-agent extend`: a bundle extended with reviews, and B and B2 measured side by side.

The reviews are read and decoded (agent.runtime.reviews), the new bundle is written
(agent.engine.extend), then both bundles score the same sets and the report puts the numbers next
to each other:

- the clean held-out set: accuracy (the model's, unchanged, and DkNN's), validity of the p-values
  (the share of true labels with p ≤ τ, about τ when calibration holds), quarantined at τ;
- each out-of-distribution set: quarantined at τ and credibility's AUROC against the clean set;
- the reviewed events, by verdict: the share still quarantined and, for the indexed ones, DkNN's
  accuracy against the reviewed label. These inputs are in B2's indexes, so their B2 numbers are
  in-sample: they show the reviews took, not how B2 generalises (held-out data does that; the lab's
  `bench extend` measures it on rotated digits).

Writes `<stem>.json` (every number), `<stem>.md` (the tables) and, where reviews said
out_of_scope, `<stem>-out-of-scope.npz`: those events' inputs by model input name, a DATA set for
`dknn-agent evaluate --ood`. Free text from the reviews (event ids in skip messages) is escaped in
the Markdown: it is data.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent.engine.bundle import BundleTrust, read_manifest
from agent.engine.data_files import Dataset
from agent.engine.dknn import DkNN
from agent.engine.extend import Extension, extend_bundle
from agent.errors import ConfigError
from agent.evaluation.metrics import VALIDITY_TAUS, auroc, validity
from agent.evaluation.scoring import SetScores, score_set
from agent.runtime.reviews import ReadReviews, read_reviews

MODEL_ANSWER = "model_answer"  # a model_right review of an answer this bundle's model does not give
SIDES = ("before", "after")


@dataclass(frozen=True)
class ExtendOptions:
    artifacts: Path  # B
    reviews: str  # a JSONL file or kafka://HOST:PORT/TOPIC
    calibration: Dataset  # the set B was calibrated on: B2's calibration points
    out: Path  # B2
    clean: Dataset  # labelled held-out data, used by neither fit nor the reviews
    ood: dict[str, Dataset] = field(default_factory=dict)
    report_dir: Path | None = None  # default: beside B2
    name: str | None = None  # default: <B2's directory name>-extend
    threshold: float = 0.1
    batch_size: int = 256
    trust: BundleTrust = BundleTrust()
    model_version: str | None = None
    force: bool = False
    command: str = ""
    progress: bool = True

    @property
    def stem(self) -> str:
        return self.name or f"{self.out.name}-extend"

    @property
    def where(self) -> Path:
        return self.report_dir or self.out.resolve().parent


def run_extension(options: ExtendOptions) -> dict[str, Any]:
    """Reads the reviews, writes B2, scores both bundles and writes the report; returns its JSON."""
    if options.clean.y is None:
        raise ConfigError("--clean needs labels ('y'): accuracy and validity are measured on it")
    manifest, _ = read_manifest(Path(options.artifacts))
    read = read_reviews(options.reviews, manifest)
    if not read.points:
        raise ConfigError(f"no usable review to add from {read.source}: {_summary(read)}")
    extension = extend_bundle(
        base=options.artifacts,
        reviews=read.engine_reviews(),
        calibration=options.calibration,
        out=options.out,
        trust=options.trust,
        model_version=options.model_version,
        batch_size=options.batch_size,
        force=options.force,
    )
    for point in extension.model_changed:
        read.skip(MODEL_ANSWER, f"{point.event_id[:128]!r}: a model_right review of an answer this model does not give")
    sets = {"clean": options.clean, **options.ood, **_reviewed_sets(read, extension)}
    kinds = {"clean": "clean", **{name: "ood" for name in options.ood}}
    result = _compare(options, read, extension, sets, kinds)
    options.where.mkdir(parents=True, exist_ok=True)
    if read.out_of_scope_inputs:
        names = [spec.name for spec in manifest.inputs]
        arrays = dict(zip(names, map(np.stack, zip(*read.out_of_scope_inputs, strict=True)), strict=True))
        path = options.where / f"{options.stem}-out-of-scope.npz"
        np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds badly
        result["out_of_scope_set"] = str(path)
    (options.where / f"{options.stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (options.where / f"{options.stem}.md").write_text(markdown(result))
    return result


def _summary(read: ReadReviews) -> str:
    skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(read.skipped.items())) or "none skipped"
    first = next(iter(read.first_skip.values()), "")
    return f"{read.records} record(s), {len(read.out_of_scope)} out_of_scope, skipped: {skipped}" + (
        f" (first: {first})" if first else ""
    )


def _reviewed_sets(read: ReadReviews, extension: Extension) -> dict[str, Dataset]:
    """The reviewed events B2 took in, by verdict, with their reviewed labels; the out-of-scope ones."""
    added = {point.event_id: point for point in extension.added}
    sets = {}
    for verdict in ("model_right", "model_wrong"):
        chosen = [p for p in read.points if p.review.event_id in added and p.review.verdict == verdict]
        if chosen:
            sets[f"reviewed {verdict}"] = _dataset([p.inputs for p in chosen], [p.review.label for p in chosen])
    if read.out_of_scope_inputs:
        sets["reviewed out_of_scope"] = _dataset(read.out_of_scope_inputs, None)
    return sets


def _dataset(rows: list[tuple[np.ndarray, ...]], labels: list[int] | None) -> Dataset:
    arrays = {f"input{i}": np.stack(column) for i, column in enumerate(zip(*rows, strict=True))}
    x: np.ndarray | dict[str, np.ndarray] = arrays["input0"] if len(arrays) == 1 else arrays
    return Dataset(x, None if labels is None else np.asarray(labels, dtype=np.int64), source="reviews")


def _compare(
    options: ExtendOptions,
    read: ReadReviews,
    extension: Extension,
    sets: dict[str, Dataset],
    kinds: dict[str, str],
) -> dict[str, Any]:
    scorers = {
        "before": DkNN.from_bundle(options.artifacts, trust=options.trust),
        "after": DkNN.from_bundle(options.out, trust=options.trust),
    }
    names = [spec.name for spec in scorers["before"].manifest.inputs]
    scores: dict[str, dict[str, SetScores]] = {side: {} for side in SIDES}
    for side, scorer in scorers.items():
        for name, data in sets.items():
            arrays = data.arrays_for(names) if name in kinds else data.arrays  # the reviewed sets: in input order
            scores[side][name] = score_set(scorer, arrays, options.batch_size, f"{side}:{name}", options.progress)
    reviews = extension.manifest.reviews
    assert reviews is not None  # extend_bundle writes them
    return {
        "extension": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": options.command,
        "before": _bundle(options.artifacts, scorers["before"]),
        "after": _bundle(options.out, scorers["after"]),
        "reviews": {
            "source": read.source,
            "records": read.records,
            "added": len(extension.added),
            "kept": extension.kept,
            "replaced": extension.replaced,
            "points": len(reviews.points),
            "out_of_scope": len(reviews.out_of_scope),
            "skipped": dict(sorted(read.skipped.items())),
            "first_skip": dict(sorted(read.first_skip.items())),
        },
        "threshold": options.threshold,
        "sets": {
            name: {
                "n": len(data),
                "kind": kinds.get(name, "reviewed"),
                **{
                    side: _measures(data, scores[side][name], scores[side]["clean"], options.threshold, name == "clean")
                    for side in SIDES
                },
            }
            for name, data in sets.items()
        },  # fmt: skip
    }


def _bundle(path: Path, scorer: DkNN) -> dict[str, Any]:
    manifest = scorer.manifest
    return {
        "path": str(path),
        "digest": scorer.digest,
        "model": manifest.model.name,
        "version": manifest.model.version,
        "train_size": manifest.train.size,
        "calibration_size": manifest.calibration.size,
    }


def _measures(data: Dataset, scores: SetScores, clean: SetScores, threshold: float, is_clean: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "quarantined": float((scores.credibility < threshold).mean()),
        "mean_credibility": float(scores.credibility.mean()),
    }
    if data.y is not None:
        right = scores.model_prediction == data.y
        held = scores.credibility < threshold
        out["model_accuracy"] = float(right.mean())
        out["dknn_accuracy"] = float((scores.prediction == data.y).mean())
        # What an operator weighs: alarms on answers that were right, and wrong answers caught.
        out["quarantined_model_right"] = float(held[right].mean()) if right.any() else None
        out["quarantined_model_wrong"] = float(held[~right].mean()) if (~right).any() else None
    if is_clean:
        assert data.y is not None
        out["validity"] = validity(scores.p_of(data.y))
    else:
        out["auroc_vs_clean"] = auroc(clean.credibility, scores.credibility)
    return out


def markdown(result: dict[str, Any]) -> str:
    before, after, reviews = result["before"], result["after"], result["reviews"]
    tau = result["threshold"]
    lines = [
        f"# Extension: {_md(before['model'])} {_md(before['version'])} → {_md(after['version'])}",
        "",
        f"B {_code(before['path'])} ({before['digest']}, {before['train_size']:,} indexed points) and B2 "
        f"{_code(after['path'])} ({after['digest']}, {after['train_size']:,}): {reviews['added']} reviewed inputs "
        f"added, {reviews['kept']} kept from B, {reviews['replaced']} replaced by later reviews, "
        f"{reviews['out_of_scope']} out of scope (kept out of the indexes). The same {before['calibration_size']} "
        "calibration points, scored against B2's indexes; B's distance reference and residual term, and the reviewed "
        "points' own distances for the inputs they vouch for.",
        "",
        f"Reviews: {reviews['records']} record(s) from {_code(reviews['source'])}; skipped: "
        + (", ".join(f"{count} {_md(reason)}" for reason, count in reviews["skipped"].items()) or "none")
        + ".",
        "",
    ]
    if result.get("command"):
        lines += [f"Regenerate: {_code(result['command'])}", ""]
    sets = result["sets"]
    clean = sets["clean"]
    lines += [
        f"| clean held-out ({clean['n']:,}) | B | B2 |",
        "|---|---|---|",
        f"| model accuracy | {_pct(clean['before']['model_accuracy'])} | {_pct(clean['after']['model_accuracy'])} |",
        f"| DkNN accuracy | {_pct(clean['before']['dknn_accuracy'])} | {_pct(clean['after']['dknn_accuracy'])} |",
        *(
            f"| validity, p ≤ {t} (about {t}) | {clean['before']['validity'][str(t)]:.3f} | "
            f"{clean['after']['validity'][str(t)]:.3f} |"
            for t in VALIDITY_TAUS
        ),
        f"| quarantined at τ = {tau} | {_pct(clean['before']['quarantined'])} | {_pct(clean['after']['quarantined'])} |",
        "",
    ]
    others = [name for name in sets if name != "clean"]
    if others:
        lines += [
            "Quarantined at τ, credibility AUROC against the clean set, and DkNN accuracy where labelled (against "
            "the reviewed label for reviewed events, which B2 holds: in-sample):",
            "",
            "| set | n | quarantined B | B2 | AUROC B | B2 | DkNN accuracy B | B2 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name in others:
            one = sets[name]
            b, b2 = one["before"], one["after"]
            lines.append(
                f"| {_md(name)} | {one['n']:,} | {_pct(b['quarantined'])} | {_pct(b2['quarantined'])} | "
                f"{b['auroc_vs_clean']:.3f} | {b2['auroc_vs_clean']:.3f} | {_pct(b.get('dknn_accuracy'))} | "
                f"{_pct(b2.get('dknn_accuracy'))} |"
            )
        lines.append("")
        labelled = [name for name in others if sets[name]["before"].get("quarantined_model_right") is not None]
        if labelled:
            lines += [
                "Quarantined at τ where the model's answer is right (false alarms) and where it is wrong (caught):",
                "",
                "| set | model accuracy | false alarms B | B2 | caught B | B2 |",
                "|---|---|---|---|---|---|",
            ]
            for name in labelled:
                b, b2 = sets[name]["before"], sets[name]["after"]
                lines.append(
                    f"| {_md(name)} | {_pct(b['model_accuracy'])} | {_pct(b['quarantined_model_right'])} | "
                    f"{_pct(b2['quarantined_model_right'])} | {_pct(b.get('quarantined_model_wrong'))} | "
                    f"{_pct(b2.get('quarantined_model_wrong'))} |"
                )
            lines.append("")
    if reviews["first_skip"]:
        lines += ["Skipped reviews, the first of each reason:", ""]
        lines += [f"- {_md(reason)}: {_md(message)}" for reason, message in reviews["first_skip"].items()]
        lines.append("")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _code(text: str) -> str:
    """The operator's own text (a path, the command line) as inline code."""
    return "`" + " ".join(str(text).split()).replace("`", "'") + "`"


def _md(text: str) -> str:
    """Text from a record as inert Markdown: HTML escaped, table and emphasis characters quoted, one line."""
    escaped = html.escape(" ".join(str(text).split()), quote=False)
    for character in "\\`*_[]|#":
        escaped = escaped.replace(character, "\\" + character)
    return escaped
