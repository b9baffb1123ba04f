"""Every error the agent raises on purpose, in one tree, so callers can catch as much as they mean.

    DknnError                 root; its message is one line for a human; `retriable` says
    │                         whether trying the same thing again can help
    ├── ConfigError           a setting or command-line option is invalid
    ├── DataError             a data file (.npy, .npz, MNIST IDX) is missing, unreadable or inconsistent
    ├── BundleError           the artifact bundle is missing, corrupted or inconsistent; names the file
    ├── FitError              fitting a bundle failed on data that was readable (e.g. a layer too
    │                         small for the requested PCA)
    ├── InputError            an input array does not fit the bundle's model (dtype, shape, NaN)
    │   ├── EventError        one inference event cannot be scored; `reason` is a bounded label
    │   └── ReviewError       one review record cannot be used (`dknn-agent extend`); `reason` likewise
    └── ConnectorError        a source or sink failed (broker unreachable, delivery not confirmed,
        │                     disk full); nothing has been committed for the failed work
        ├── CommitRejectedError    the consumer group moved on (a rebalance) before a commit: the batch
        │                     goes to the partition's new owner; log it and keep going
        └── DeliveryRefusedError   the sink refused particular records for good (too large, not
                              authorised); `refused` says which, so each can be replaced

A low-credibility input is a normal result, never an exception. `agent.cli` turns every
`DknnError` into one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Literal, get_args

# Why an event was dead-lettered: a Prometheus label and a header value, so the set is closed.
EventErrorReason = Literal[
    "too_large",
    "bad_json",
    "schema",
    "unknown_model",
    "dtype",
    "shape",
    "non_finite",
    "out_of_range",
]
EVENT_ERROR_REASONS: tuple[EventErrorReason, ...] = get_args(EventErrorReason)
# Why a review record was left out of an extension: counted per reason in its report, so closed too.
ReviewErrorReason = Literal[
    "too_large",
    "bad_json",
    "schema",
    "unknown_model",
    "no_input",
    "input",
    "model_answer",
]
REVIEW_ERROR_REASONS: tuple[ReviewErrorReason, ...] = get_args(ReviewErrorReason)


class DknnError(Exception):
    """Root of every error the agent raises deliberately; its message is one line for a human."""

    retriable: bool = False


class ConfigError(DknnError):
    """A setting or command-line option is invalid."""


class DataError(DknnError):
    """A data file is missing, unreadable, or holds arrays of the wrong kind."""


class BundleError(DknnError):
    """The artifact bundle is missing, corrupted or inconsistent; names the offending file."""


class FitError(DknnError):
    """Fitting a bundle failed although its inputs were readable."""


class InputError(DknnError):
    """An input array does not match what the bundle's model expects."""


class EventError(InputError):
    """An event that cannot be scored; `reason` is one of `EVENT_ERROR_REASONS`."""

    def __init__(self, reason: EventErrorReason, message: str) -> None:
        if reason not in EVENT_ERROR_REASONS:
            raise ValueError(f"unknown event error reason {reason!r}")
        one_line = " ".join(str(message).split())
        super().__init__(one_line[:300])
        self.reason = reason

    def __reduce__(self) -> tuple[type[EventError], tuple[EventErrorReason, str]]:  # survives pickling
        return (type(self), (self.reason, str(self)))


class ReviewError(InputError):
    """A review record that cannot be used; `reason` is one of `REVIEW_ERROR_REASONS`. Reviews come
    from a topic or a file like events do, so one bad record is skipped and counted, never a crash."""

    def __init__(self, reason: ReviewErrorReason, message: str) -> None:
        if reason not in REVIEW_ERROR_REASONS:
            raise ValueError(f"unknown review error reason {reason!r}")
        super().__init__(" ".join(str(message).split())[:300])
        self.reason = reason


class ConnectorError(DknnError):
    """A source or sink failed.

    `retriable` says whether the same call may succeed later (a broker hiccup) or not (a bad
    setting, an authorisation failure). Either way nothing has been committed for the failed
    work, so a restart replays it.
    """

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class CommitRejectedError(ConnectorError):
    """The group rebalanced under us: the commit was refused, the batch will be redelivered to whoever
    owns the partition now, and the consumer rejoins on its next poll. Never a reason to exit."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=False)


class DeliveryRefusedError(ConnectorError):
    """Records the sink will never take as they are. `refused` maps each one's position among the
    records sent since the previous flush to the reason; every other record was confirmed."""

    def __init__(self, refused: dict[int, str]) -> None:
        first = min(refused)
        super().__init__(f"{len(refused)} record(s) refused for good (first: {refused[first]})", retriable=False)
        self.refused = dict(refused)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type where it has none), bounded: what a one-line
    error quotes of a library's failure."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
