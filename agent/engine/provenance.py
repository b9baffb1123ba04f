"""Where a bundle's reviewed points came from: the manifest's `reviews` (`dknn-agent extend`).

An extended bundle's indexes hold the fitted training set (items 0 … base.train_size − 1) and
then one item per reviewed input, in the order of `points`: point i is item base.train_size + i of
every index and carries the label `train_labels.npy` holds for it. Each point says which review
put it there (event id, verdict, label, reviewer, when, and the review's position in its source),
so an operator can answer "why does this bundle think that?" down to a person's decision, and the
manifest's digest covers all of it. Out-of-scope reviews add no point; their events are listed too.

Bounded like every manifest field: at most `MAX_REVIEWED` points and as many out-of-scope events,
short strings, so a manifest stays far below its 16 MiB limit.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

MAX_REVIEWED = 20_000  # reviewed events a bundle lists, each kind: a person's work, not a data set
MAX_SOURCES = 64
Text = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BaseBundle(_Frozen):
    """The fitted bundle the reviewed points were added to."""

    version: str = Field(min_length=1, max_length=64, description="its model version")
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="its bundle digest")
    train_size: int = Field(ge=1, le=1_000_000_000, description="its training points: items before the reviewed ones")


class ReviewedEvent(_Frozen):
    """One review that shaped the bundle: who decided what, when, and where the review was read."""

    event_id: Text
    verdict: Literal["model_right", "model_wrong", "out_of_scope"]
    reviewer: Text
    reviewed_at: str = Field(min_length=1, max_length=40)
    source: int = Field(ge=0, lt=MAX_SOURCES, description="index into `ReviewSpec.sources`")
    partition: int = Field(ge=0, le=1_000_000)
    offset: int = Field(ge=0, le=2**63 - 1, description="the review's offset (a file: its 0-based line)")


class ReviewedPoint(ReviewedEvent):
    """A reviewed input in the indexes, under `label`: the model's answer (model_right) or the given one."""

    label: int = Field(ge=0, le=10_000)

    @model_validator(mode="after")
    def _indexed_verdicts(self) -> ReviewedPoint:
        if self.verdict == "out_of_scope":
            raise ValueError("an out_of_scope review adds no point to the indexes")
        return self


class ReviewSpec(_Frozen):
    """The reviews a bundle was extended with (absent: a bundle as fitted)."""

    base: BaseBundle
    sources: tuple[Annotated[str, StringConstraints(min_length=1, max_length=1024)], ...] = Field(
        min_length=1, max_length=MAX_SOURCES, description="where the reviews were read: a file or kafka://…/TOPIC"
    )
    points: tuple[ReviewedPoint, ...] = Field(max_length=MAX_REVIEWED, description="item base.train_size + i")
    out_of_scope: tuple[ReviewedEvent, ...] = Field((), max_length=MAX_REVIEWED)

    @model_validator(mode="after")
    def _consistent(self) -> ReviewSpec:
        ids = [one.event_id for one in (*self.points, *self.out_of_scope)]
        if len(set(ids)) != len(ids):
            raise ValueError("an event is reviewed at most once in a bundle (the latest review wins)")
        if any(one.verdict != "out_of_scope" for one in self.out_of_scope):
            raise ValueError("out_of_scope lists out_of_scope reviews only")
        if any(one.source >= len(self.sources) for one in (*self.points, *self.out_of_scope)):
            raise ValueError("a review names a source the bundle does not list")
        return self
