"""The review console's index: quarantined events and their latest reviews in SQLite (docs/design.md §5.5).

Why SQLite: the pages filter and page through up to a million events with a few indexed columns,
on one replica, without a database server to run; the file is derived state, rebuilt from the two
topics whenever it is lost (`new` tells the consumer to start them from the beginning). Why a copy
at all rather than reading the topics per page: a topic cannot be filtered or read newest first.

What it holds:

- `events`: one row per event id (a replayed or duplicated quarantine record is ignored: the first
  wins), the columns the list filters on, the record's raw bytes (data: parsed again, defensively,
  only for the event page) and `verdict`, the latest review's, copied here so "unreviewed" is an
  indexed filter rather than a join;
- `reviews`: the latest review per event id, whichever arrives first, chosen as
  `agent.runtime.wire.review.latest_reviews` chooses (later `reviewed_at`, then later position);
- `offsets`: the next offset per topic partition, written in the same transaction as the rows, so
  the consumer commits to Kafka only what the file already holds.

Paging is by key (`quarantined_ms`, `event_id`) rather than OFFSET: page 2,000 costs what page 1
does, and a page does not shift when new events arrive while someone reads.

One writer (the ingest thread, and a verdict posted from a page, under one lock); readers get a
connection per thread, and WAL lets them read while the writer writes.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from agent.runtime.wire.review import Review
from connectors.base import TopicPartition

PAGE_SIZE = 50
ReviewState = Literal["any", "unreviewed", "reviewed", "model_right", "model_wrong", "out_of_scope"]
REVIEW_STATES: tuple[ReviewState, ...] = get_args(ReviewState)
PROBLEMS = ("model_wrong", "out_of_scope")  # a review saying the quarantine caught something real

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    quarantined_ms INTEGER NOT NULL,
    model_prediction INTEGER,
    prediction INTEGER,
    credibility REAL,
    reason TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    verdict TEXT,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events (quarantined_ms, event_id);
CREATE INDEX IF NOT EXISTS events_model ON events (model_prediction, quarantined_ms, event_id);
CREATE INDEX IF NOT EXISTS events_dknn ON events (prediction, quarantined_ms, event_id);
CREATE INDEX IF NOT EXISTS events_verdict ON events (verdict, quarantined_ms, event_id);
CREATE TABLE IF NOT EXISTS reviews (
    event_id TEXT PRIMARY KEY,
    verdict TEXT NOT NULL,
    label INTEGER,
    note TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    reviewed_at TEXT NOT NULL,
    reviewed_us INTEGER NOT NULL,
    part INTEGER NOT NULL,
    pos INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS offsets (topic TEXT NOT NULL, part INTEGER NOT NULL, next INTEGER NOT NULL,
    PRIMARY KEY (topic, part));
"""


@dataclass(frozen=True)
class QuarantinedEvent:
    """One quarantine record as the list needs it, plus its raw bytes for the event page."""

    event_id: str
    quarantined_ms: int  # the record's timestamp: when the agent quarantined it
    model_prediction: int | None
    prediction: int | None
    credibility: float | None
    reason: str
    model_name: str  # the dknn.bundle.model header (the bundle that quarantined it)
    model_version: str
    record: bytes


@dataclass(frozen=True)
class StoredReview:
    """The latest review of one event; `part`/`pos` its position (-1: posted here, not yet read back)."""

    event_id: str
    verdict: str
    label: int | None
    note: str
    reviewer: str
    reviewed_at: str
    reviewed_us: int
    part: int
    pos: int

    @classmethod
    def of(cls, review: Review, part: int = -1, pos: int = -1) -> StoredReview:
        """A parsed review as a row, read at `part`/`pos` (the defaults: posted here)."""
        reviewed_us = int(review.reviewed_time.timestamp() * 1_000_000)
        return cls(
            review.event_id, review.verdict, review.label, review.note, review.reviewer, review.reviewed_at,
            reviewed_us, part, pos,
        )  # fmt: skip


@dataclass(frozen=True)
class Filters:
    """What the list shows; None is "any"."""

    model_prediction: int | None = None
    prediction: int | None = None
    credibility_min: float | None = None
    credibility_max: float | None = None  # exclusive: "credibility < 0.05"
    reason: str | None = None  # a substring of the reason
    since_ms: int | None = None
    until_ms: int | None = None  # exclusive
    review: ReviewState = "any"


Cursor = tuple[int, str]  # (quarantined_ms, event_id) of the last row shown: the next page starts below it


@dataclass(frozen=True)
class Row:
    event_id: str
    quarantined_ms: int
    model_prediction: int | None
    prediction: int | None
    credibility: float | None
    reason: str
    verdict: str | None


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    next_cursor: Cursor | None  # None: this is the last page


@dataclass(frozen=True)
class Summary:
    """How far review has got: events held, reviewed, and the reviews that found a real problem."""

    events: int = 0
    reviewed: int = 0
    problems: int = 0  # reviewed model_wrong or out_of_scope

    @property
    def coverage(self) -> float:
        return self.reviewed / self.events if self.events else 0.0

    @property
    def precision(self) -> float | None:
        """Of the reviewed quarantined events, the share that were real problems; None before any review."""
        return self.problems / self.reviewed if self.reviewed else None


@dataclass(frozen=True)
class Applied:
    """What one `apply` changed: the reviews that became their event's latest, with the event's
    quarantine time where the event is held (for the review latency)."""

    reviews: list[tuple[StoredReview, int | None]]


class Store:
    """The SQLite file behind the console; see the module docstring."""

    def __init__(self, path: Path, *, max_events: int = 1_000_000) -> None:
        self.path = path
        self.max_events = max_events
        self._local = threading.local()
        self._lock = threading.Lock()
        self._writer = self._connect()
        self._writer.executescript(_SCHEMA)
        self.new = self._writer.execute("SELECT NOT EXISTS (SELECT 1 FROM offsets)").fetchone()[0] == 1
        self._summary = self._count()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed transaction survives a power cut, so the Kafka commit that follows it
        # never points past rows the file lost.
        connection.execute("PRAGMA synchronous=FULL")
        return connection

    def _reader(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            connection.execute("PRAGMA query_only=ON")
            self._local.connection = connection
        return connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")

    # -- writing -------------------------------------------------------------------------------

    def apply(
        self,
        events: Iterable[QuarantinedEvent],
        reviews: Iterable[StoredReview],
        offsets: dict[TopicPartition, int],
    ) -> Applied:
        """Events, reviews and the offsets after them, in one transaction."""
        events, reviews = list(events), list(reviews)
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO events (event_id, quarantined_ms, model_prediction, prediction, credibility, "
                "reason, model_name, model_version, verdict, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
                "(SELECT verdict FROM reviews WHERE reviews.event_id = ?), ?)",
                [
                    (e.event_id, e.quarantined_ms, e.model_prediction, e.prediction, e.credibility, e.reason,
                     e.model_name, e.model_version, e.event_id, e.record)
                    for e in events
                ],
            )  # fmt: skip
            applied = []
            for one in reviews:
                won, quarantined = self._put_review(db, one)
                if won:
                    applied.append((one, quarantined))
            db.executemany(
                "INSERT INTO offsets (topic, part, next) VALUES (?, ?, ?) ON CONFLICT (topic, part) "
                "DO UPDATE SET next = max(next, excluded.next)",
                [(topic, part, next_offset) for (topic, part), next_offset in offsets.items()],
            )
            summary = self._count(db)
            if summary.events > self.max_events:
                self._prune(db, summary.events - self.max_events)
                summary = self._count(db)
        self._summary = summary
        return Applied(applied)

    def put_review(self, review: StoredReview) -> None:
        """A review posted from a page, so the page shows it before it is read back from the topic."""
        self.apply((), [review], {})

    @staticmethod
    def _put_review(db: sqlite3.Connection, one: StoredReview) -> tuple[bool, int | None]:
        """Stores `one` if it is the event's latest: whether it did, and the event's quarantine time
        (None: the event is not held)."""
        changed = db.execute(
            "INSERT INTO reviews (event_id, verdict, label, note, reviewer, reviewed_at, reviewed_us, part, pos) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO UPDATE SET verdict = excluded.verdict, "
            "label = excluded.label, note = excluded.note, reviewer = excluded.reviewer, "
            "reviewed_at = excluded.reviewed_at, reviewed_us = excluded.reviewed_us, part = excluded.part, "
            "pos = excluded.pos WHERE (excluded.reviewed_us, excluded.part, excluded.pos) > "
            "(reviews.reviewed_us, reviews.part, reviews.pos)",
            (one.event_id, one.verdict, one.label, one.note, one.reviewer, one.reviewed_at, one.reviewed_us,
             one.part, one.pos),
        ).rowcount  # fmt: skip
        if not changed:
            return False, None
        db.execute("UPDATE events SET verdict = ? WHERE event_id = ?", (one.verdict, one.event_id))
        found = db.execute("SELECT quarantined_ms FROM events WHERE event_id = ?", (one.event_id,)).fetchone()
        return True, None if found is None else int(found[0])

    @staticmethod
    def _prune(db: sqlite3.Connection, excess: int) -> None:
        """The `excess` oldest events go, past `max_events` (their reviews stay: they are small, and
        say what the topic says)."""
        db.execute(
            "DELETE FROM events WHERE event_id IN (SELECT event_id FROM events ORDER BY quarantined_ms, event_id LIMIT ?)",
            (excess,),
        )

    # -- reading -------------------------------------------------------------------------------

    def _count(self, db: sqlite3.Connection | None = None) -> Summary:
        placeholders = ", ".join("?" * len(PROBLEMS))
        events, reviewed, problems = (
            (db or self._reader())
            .execute(
                f"SELECT COUNT(*), COUNT(verdict), COUNT(CASE WHEN verdict IN ({placeholders}) THEN 1 END) FROM events",
                PROBLEMS,
            )
            .fetchone()
        )
        return Summary(events=int(events), reviewed=int(reviewed), problems=int(problems))

    @property
    def summary(self) -> Summary:
        """As of the last write (kept, not counted per page view)."""
        return self._summary

    def offsets(self) -> dict[TopicPartition, int]:
        return {(t, p): n for t, p, n in self._reader().execute("SELECT topic, part, next FROM offsets")}

    def page(self, filters: Filters, after: Cursor | None = None, size: int = PAGE_SIZE) -> Page:
        """Newest first, `size` rows below `after` (the previous page's last row)."""
        where, params = _where(filters)
        if after is not None:
            where.append("(quarantined_ms < ? OR (quarantined_ms = ? AND event_id < ?))")
            params += [after[0], after[0], after[1]]
        sql = (
            "SELECT event_id, quarantined_ms, model_prediction, prediction, credibility, reason, verdict FROM events"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY quarantined_ms DESC, event_id DESC LIMIT ?"
        )
        rows = [Row(*found) for found in self._reader().execute(sql, [*params, size + 1])]
        more = len(rows) > size
        rows = rows[:size]
        return Page(rows, (rows[-1].quarantined_ms, rows[-1].event_id) if more and rows else None)

    def event(self, event_id: str) -> tuple[QuarantinedEvent, StoredReview | None] | None:
        found = (
            self._reader()
            .execute(
                "SELECT event_id, quarantined_ms, model_prediction, prediction, credibility, reason, model_name, "
                "model_version, record FROM events WHERE event_id = ?",
                (event_id,),
            )
            .fetchone()
        )
        if found is None:
            return None
        review = (
            self._reader()
            .execute(
                "SELECT event_id, verdict, label, note, reviewer, reviewed_at, reviewed_us, part, pos FROM reviews "
                "WHERE event_id = ?",
                (event_id,),
            )
            .fetchone()
        )
        event = QuarantinedEvent(
            found[0], found[1], found[2], found[3], found[4], found[5], found[6], found[7], bytes(found[8])
        )
        return event, StoredReview(*review) if review else None

    def close(self) -> None:
        with self._lock:
            self._writer.close()


def _where(filters: Filters) -> tuple[list[str], list[object]]:
    where: list[str] = []
    params: list[object] = []
    for column, value in (("model_prediction", filters.model_prediction), ("prediction", filters.prediction)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    for clause, bound in (
        ("credibility >= ?", filters.credibility_min),
        ("credibility < ?", filters.credibility_max),
        ("quarantined_ms >= ?", filters.since_ms),
        ("quarantined_ms < ?", filters.until_ms),
    ):
        if bound is not None:
            where.append(clause)
            params.append(bound)
    if filters.reason:
        where.append("instr(reason, ?) > 0")  # a substring, no LIKE wildcards to escape
        params.append(filters.reason)
    if filters.review == "unreviewed":
        where.append("verdict IS NULL")
    elif filters.review == "reviewed":
        where.append("verdict IS NOT NULL")
    elif filters.review != "any":
        where.append("verdict = ?")
        params.append(filters.review)
    return where, params
