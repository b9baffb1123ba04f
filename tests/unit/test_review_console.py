"""The review console (`dknn-agent review`, docs/design.md §5.5) through Starlette's TestClient, on the
tiny bundle, with an in-memory source of quarantine and review records and an in-memory sink."""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
from starlette.testclient import TestClient

from agent.cli import main, parse_command
from agent.console.app import MAX_BODY_BYTES, Console, create_app
from agent.console.auth import Auth, Credentials, load_credentials
from agent.console.ingest import Ingest
from agent.console.store import Filters, Store
from agent.engine.bundle import verify_bundle
from agent.errors import ConfigError
from agent.runtime.events import encode_event
from agent.runtime.telemetry import ReviewTelemetry
from agent.runtime.wire.review import parse_review, review_record
from connectors.base import Offsets, Record, TopicPartition
from tests.conftest import TinyProblem, fit_tiny, pipeline_for
from tests.support.memory_connectors import MemorySink, MemorySource

Q, R = "quarantine", "reviews"
HEADERS = [("dknn.bundle.model", b"tiny"), ("dknn.bundle.version", b"1")]
T0 = 1_764_000_000_000
XSS_ID = "<script>alert(1)</script>"
XSS_ATTR = '"><img src=x onerror=alert(1)>'
TOKEN = "t0ken-of-sixteen-chars"  # a console's bearer token (at least 16 characters)


class ListSource(MemorySource):
    """Records of several topics, handed out in order; `commit` checks the store already holds them."""

    def __init__(self, records: list[Record], store: Store | None = None) -> None:
        super().__init__([])
        self.records = records
        self.store = store

    def commit(self, offsets: Offsets) -> None:
        if self.store is not None:
            held = self.store.offsets()
            assert all(held.get(tp, -1) >= offset for tp, offset in offsets.items()), "committed before stored"
        super().commit(offsets)

    def assignment(self) -> set[TopicPartition]:
        return {(Q, 0), (R, 0)}

    def ends(self) -> dict[TopicPartition, int]:
        ends = {(Q, 0): 0, (R, 0): 0}
        for record in self.records:
            ends[record.position] = max(ends[record.position], record.offset + 1)
        return ends


class Topics:
    """Builds records with increasing offsets per topic."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._offsets = {Q: 0, R: 0}

    def add(self, topic: str, value: bytes, timestamp_ms: int | None = None, headers=HEADERS) -> Record:
        record = Record(topic, 0, self._offsets[topic], None, value, list(headers), timestamp_ms)
        self._offsets[topic] += 1
        self.records.append(record)
        return record


def quarantine(
    event_id: str,
    *,
    model_prediction: int = 0,
    prediction: int = 0,
    credibility: float = 0.01,
    reason: str | None = None,
    attributes: dict | None = None,
) -> bytes:
    """A quarantine record as the agent writes it (docs/design.md §5.2), for the tiny model."""
    event = orjson.loads(encode_event(event_id, np.arange(8, dtype=np.float32), "tiny", "1", attributes=attributes))
    block = {
        "prediction": prediction,
        "credibility": credibility,
        "confidence": 0.9,
        "model_prediction": model_prediction,
        "verdict": "quarantined",
        "p_values": [credibility, 0.005, 0.0],
        "served_label": None,
        "reason": reason or f"credibility {credibility:.4f} below threshold 0.1",
        "neighbors": {
            "relu1": {"ids": [0, 1, 2, 3, 4], "labels": [0, 0, 1, 1, 1], "label_counts": {"1": 6, "0": 4}},
            "logits": {"ids": [5, 6, 7, 8, 9], "labels": [0, 0, 0, 0, 0], "label_counts": {"0": 10}},
        },
        "source": {"topic": "inference-events", "partition": 0, "offset": 7},
    }
    return orjson.dumps({"event": event, "dknn": block})


@dataclass
class Harness:
    client: TestClient
    console: Console
    sink: MemorySink
    source: ListSource
    telemetry: ReviewTelemetry

    def csrf(self, path: str) -> str:
        page = self.client.get(path)
        assert page.status_code == 200, page.text
        match = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert match, "no CSRF field on the page"
        return match.group(1)


@pytest.fixture(scope="module")
def exemplar_bundle(tiny_problem: TinyProblem, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_tiny(tiny_problem, tmp_path_factory.mktemp("console") / "tiny-exemplars", exemplars="inputs")


def harness(bundle: Path, topics: Topics, tmp_path: Path, credentials: Credentials | None = None) -> Harness:
    store = Store(tmp_path / "console.db")
    source = ListSource(topics.records, store)
    telemetry = ReviewTelemetry()
    ingest = Ingest(source, store, telemetry, quarantine_topic=Q, reviews_topic=R, ends=source.ends())
    while ingest.step(0):
        pass
    sink = MemorySink()
    console = Console(
        store, verify_bundle(bundle, importing=False), ingest, telemetry, sink, R, Auth(credentials or Credentials())
    )
    return Harness(TestClient(create_app(console)), console, sink, source, telemetry)


def one_event(bundle: Path, tmp_path: Path, credentials: Credentials | None = None) -> Harness:
    """A console holding one quarantined event, ev-1."""
    topics = Topics()
    topics.add(Q, quarantine("ev-1"), T0)
    return harness(bundle, topics, tmp_path, credentials)


@pytest.fixture
def events(exemplar_bundle: Path, tmp_path: Path) -> Iterator[Harness]:
    """120 quarantined events a minute apart: model prediction i % 3, DkNN (i + 1) % 3, credibility i / 1000."""
    topics = Topics()
    for i in range(120):
        value = quarantine(f"ev-{i:03d}", model_prediction=i % 3, prediction=(i + 1) % 3, credibility=i / 1000)
        topics.add(Q, value, T0 + 60_000 * i)
    yield harness(exemplar_bundle, topics, tmp_path)


def ids_on(html: str) -> list[str]:
    return re.findall(r'href="/events/([^"]+)"', html)


def follow_all(client: TestClient, path: str) -> list[str]:
    seen: list[str] = []
    while path:
        page = client.get(path)
        assert page.status_code == 200, page.text
        seen += ids_on(page.text)
        found = re.search(r'<a href="(/\?[^"]+)">older events', page.text)
        path = found.group(1).replace("&amp;", "&") if found else ""
    return seen


# -- the list ---------------------------------------------------------------------------------------


def test_the_list_pages_through_every_event_newest_first_once(events: Harness) -> None:
    first = events.client.get("/")
    assert ids_on(first.text)[:3] == ["ev-119", "ev-118", "ev-117"] and len(ids_on(first.text)) == 50
    assert "offset=" not in first.text  # keyset paging: the link names the last row, not a count
    seen = follow_all(events.client, "/")
    assert seen == [f"ev-{i:03d}" for i in reversed(range(120))]


def test_filters_select_exactly_the_matching_events(events: Harness) -> None:
    def matching(query: str) -> set[str]:
        return set(follow_all(events.client, "/?" + query))

    every = range(120)
    assert matching("model=1") == {f"ev-{i:03d}" for i in every if i % 3 == 1}
    assert matching("dknn=2") == {f"ev-{i:03d}" for i in every if (i + 1) % 3 == 2}
    assert matching("model=0&cmax=0.05") == {f"ev-{i:03d}" for i in every if i % 3 == 0 and i / 1000 < 0.05}
    assert matching("cmin=0.1&cmax=0.11") == {f"ev-{i:03d}" for i in every if 0.1 <= i / 1000 < 0.11}
    assert matching("reason=0.0050") == {"ev-005"}
    since = "2025-11-24T16:10"  # T0 is 2025-11-24T16:00:00Z: events 10..19 fall in the next ten minutes
    assert matching(f"since={since}&until=2025-11-24T16:20") == {f"ev-{i:03d}" for i in range(10, 20)}
    assert matching("review=reviewed") == set()
    assert len(matching("review=unreviewed")) == 120
    assert events.client.get("/?model=abc").status_code == 400
    assert events.client.get("/?review=bogus").status_code == 400
    assert events.client.get("/?after=%%%").status_code == 400


def test_a_duplicated_quarantine_record_shows_once(exemplar_bundle: Path, tmp_path: Path) -> None:
    topics = Topics()
    for offset in range(3):  # the agent replayed a batch: the same event three times
        topics.add(Q, quarantine("same-event"), T0 + offset)
    topics.add(Q, quarantine("other-event"), T0 + 10)
    h = harness(exemplar_bundle, topics, tmp_path)
    assert sorted(ids_on(h.client.get("/").text)) == ["other-event", "same-event"]
    assert h.console.store.summary.events == 2


# -- verdicts ---------------------------------------------------------------------------------------


def test_a_verdict_publishes_a_review_keyed_by_event_id_and_a_second_supersedes_it(events: Harness) -> None:
    path = "/events/ev-004"  # model prediction 1
    token = events.csrf(path)
    posted = events.client.post(
        path,
        data={"csrf": token, "verdict": "model_wrong", "label": "2", "note": "a 2, clearly"},
        follow_redirects=False,
    )
    assert posted.status_code == 303 and posted.headers["location"] == path
    ((value, key, _),) = events.sink.topics[R]
    assert key == b"ev-004"
    review = parse_review(value)
    assert (review.event_id, review.verdict, review.label, review.note) == ("ev-004", "model_wrong", 2, "a 2, clearly")
    assert review.reviewer == "anonymous" and review.model.name == "tiny" and review.event["event_id"] == "ev-004"
    page = events.client.get(path).text
    assert "model wrong" in page and "true label 2" in page

    later = events.client.post(path, data={"csrf": token, "verdict": "out_of_scope", "note": ""})
    assert later.status_code == 200  # followed the redirect to the page
    assert len(events.sink.topics[R]) == 2
    assert parse_review(events.sink.topics[R][1][0]).verdict == "out_of_scope"
    assert "out of scope" in later.text.split("Latest review:")[1].split("</p>")[0]
    assert set(follow_all(events.client, "/?review=out_of_scope")) == {"ev-004"}
    assert set(follow_all(events.client, "/?review=model_wrong")) == set()
    summary = events.console.store.summary
    assert (summary.reviewed, summary.problems, summary.events) == (1, 1, 120)


def test_a_verdict_the_review_record_refuses_is_shown_not_sent(events: Harness) -> None:
    path = "/events/ev-004"  # the model said 1: "model wrong, the true label is 1" is a contradiction
    answer = events.client.post(path, data={"csrf": events.csrf(path), "verdict": "model_wrong", "label": "1"})
    assert answer.status_code == 400 and "model_right review" in answer.text
    assert not events.sink.topics[R]


@pytest.mark.parametrize("token", [None, "", "forged", "forgé"])  # non-ASCII: still a 403, not a crash
def test_a_post_without_its_csrf_token_is_refused(events: Harness, token: str | None) -> None:
    events.csrf("/events/ev-001")  # a page was seen: the nonce cookie is set
    form = {"verdict": "model_right"} | ({"csrf": token} if token is not None else {})
    answer = events.client.post("/events/ev-001", data=form)
    assert answer.status_code == 403
    assert not events.sink.topics[R]


def test_a_token_from_another_browser_is_refused(events: Harness, exemplar_bundle: Path) -> None:
    token = events.csrf("/events/ev-001")
    other = TestClient(events.client.app)
    other.get("/events/ev-001")  # its own nonce
    assert other.post("/events/ev-001", data={"csrf": token, "verdict": "model_right"}).status_code == 403


def test_a_body_over_the_limit_is_413(events: Harness) -> None:
    token = events.csrf("/events/ev-001")
    answer = events.client.post(
        "/events/ev-001", data={"csrf": token, "verdict": "model_right", "note": "x" * (MAX_BODY_BYTES + 1)}
    )
    assert answer.status_code == 413
    assert not events.sink.topics[R]


# -- authentication ---------------------------------------------------------------------------------


def test_basic_auth_is_required_and_names_the_reviewer(exemplar_bundle: Path, tmp_path: Path) -> None:
    h = one_event(exemplar_bundle, tmp_path, Credentials(users={"alice": "s3cret pass"}))
    for path in ("/", "/events/ev-1"):
        refused = h.client.get(path)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
        assert "ev-1" not in refused.text
    assert h.client.get("/", auth=("alice", "wrong")).status_code == 401
    assert h.client.post("/events/ev-1", data={"verdict": "model_right"}).status_code == 401
    for probe in ("/healthz", "/readyz", "/metrics"):
        answer = h.client.get(probe)
        assert answer.status_code == 200 and "ev-1" not in answer.text
    h.client.auth = ("alice", "s3cret pass")
    assert "ev-1" in h.client.get("/").text
    token = h.csrf("/events/ev-1")
    assert h.client.post("/events/ev-1", data={"csrf": token, "verdict": "model_right"}).status_code == 200
    assert parse_review(h.sink.topics[R][0][0]).reviewer == "alice"


def test_a_bearer_token_or_its_login_session_is_accepted(exemplar_bundle: Path, tmp_path: Path) -> None:
    h = one_event(exemplar_bundle, tmp_path, Credentials(token=TOKEN))
    assert h.client.get("/", follow_redirects=False).headers["location"] == "/login"
    assert h.client.get("/", headers={"Authorization": "Bearer nope"}, follow_redirects=False).status_code == 303
    assert "ev-1" in h.client.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).text
    form = h.csrf("/login")
    wrong = h.client.post("/login", data={"csrf": form, "token": "nope", "name": "bob"})
    assert wrong.status_code == 401
    assert h.client.post("/login", data={"token": TOKEN, "name": "bob"}).status_code == 403  # no CSRF token
    done = h.client.post("/login", data={"csrf": form, "token": TOKEN, "name": "bob"}, follow_redirects=False)
    cookie = done.headers["set-cookie"]
    assert "dknn_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = h.client.get("/")
    assert page.status_code == 200 and "ev-1" in page.text and "bob" in page.text
    h.client.post("/events/ev-1", data={"csrf": h.csrf("/events/ev-1"), "verdict": "out_of_scope"})
    assert parse_review(h.sink.topics[R][0][0]).reviewer == "bob"


def test_logging_out_needs_the_forms_token_and_ends_the_session(exemplar_bundle: Path, tmp_path: Path) -> None:
    h = one_event(exemplar_bundle, tmp_path, Credentials(token=TOKEN))
    h.client.post("/login", data={"csrf": h.csrf("/login"), "token": TOKEN, "name": "bob"})
    assert h.client.post("/logout", data={"csrf": "forged"}).status_code == 403
    assert "ev-1" in h.client.get("/").text  # still logged in
    done = h.client.post("/logout", data={"csrf": h.csrf("/")}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/login"
    assert h.client.get("/", follow_redirects=False).headers["location"] == "/login"
    assert h.client.post("/logout", data={"csrf": h.csrf("/login")}).status_code == 403  # nobody to log out


def test_a_tampered_session_cookie_is_refused() -> None:
    auth = Auth(Credentials(token=TOKEN))
    cookie = auth.session("bob")
    assert auth.principal(None, cookie) == "bob"
    name, expiry, signature = cookie.split(".")
    forged = base64.urlsafe_b64encode(b"mallory").decode() + "." + expiry + "." + signature
    assert auth.principal(None, forged) is None
    assert auth.principal(None, Auth(Credentials(token=TOKEN)).session("bob")) is None
    assert auth._session_name(cookie, now=float(expiry) + 1) is None  # expired
    assert auth.principal(None, name + "." + expiry + ".sïgnature") is None  # non-ASCII: refused, not a crash


def test_credential_files_are_checked(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("# reviewers\nalice:pa:ss\n\nbob:x\n")
    assert load_credentials(users, None).users == {"alice": "pa:ss", "bob": "x"}
    users.write_text("alice\n")
    with pytest.raises(ConfigError, match="line 1"):
        load_credentials(users, None)
    token = tmp_path / "token"
    token.write_text("short\n")
    with pytest.raises(ConfigError, match="16 characters"):
        load_credentials(None, token)


REVIEW = [
    "review",
    "--artifacts",
    "b",
    "--bootstrap-servers",
    "k:9092",
    "--quarantine-topic",
    "q",
    "--reviews-topic",
    "r",
]


def test_a_non_loopback_host_without_credentials_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="--insecure-no-auth"):
        parse_command([*REVIEW, "--host", "0.0.0.0"])
    assert main([*REVIEW, "--host", "10.0.0.5"]) == 3
    assert "--auth-file" in capsys.readouterr().err
    assert parse_command([*REVIEW, "--host", "0.0.0.0", "--insecure-no-auth"]).host == "0.0.0.0"  # type: ignore[attr-defined]
    assert parse_command([*REVIEW, "--host", "0.0.0.0", "--auth-file", "users"]).host == "0.0.0.0"  # type: ignore[attr-defined]
    options = parse_command(REVIEW)
    assert (options.host, options.port, options.group, options.max_events) == (  # type: ignore[attr-defined]
        "127.0.0.1",
        8080,
        "dknn-review-console",
        1_000_000,
    )


# -- escaping ---------------------------------------------------------------------------------------


def test_event_data_is_escaped_everywhere_it_is_shown(exemplar_bundle: Path, tmp_path: Path) -> None:
    topics = Topics()
    value = quarantine(XSS_ID, reason=XSS_ATTR, attributes={"tenant": XSS_ATTR, XSS_ATTR[:60]: XSS_ID})
    topics.add(Q, value, T0, headers=[("dknn.bundle.model", b"tiny"), ("dknn.bundle.version", XSS_ATTR.encode())])
    review = review_record(value, verdict="out_of_scope", reviewer=XSS_ATTR, note=XSS_ID, model_name="tiny",
                           model_version="1", reviewed_at="2026-01-01T00:00:00Z")  # fmt: skip
    topics.add(R, review)
    h = harness(exemplar_bundle, topics, tmp_path)
    listing = h.client.get("/").text
    page = h.client.get("/events/" + XSS_ID.replace("/", "%2F")).text
    for html in (listing, page):
        assert "<script>" not in html and "<img src=x" not in html and 'onerror=alert(1)>"' not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page  # reason, attribute, reviewer, version
    assert 'href="/events/%3Cscript%3Ealert%281%29%3C%2Fscript%3E"' in listing
    assert 'action="/events/%3Cscript%3Ealert%281%29%3C%2Fscript%3E"' in page  # reviewed events keep the form
    csp = h.client.get("/").headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp


# -- the event page ---------------------------------------------------------------------------------


def test_the_event_page_shows_the_evidence(events: Harness) -> None:
    page = events.client.get("/events/ev-004").text
    assert "<svg" in page and "<rect" in page  # the 8 input values as a bar chart
    assert len(re.findall(r'class="bar[ "]', page)) == 3  # a p-value bar per class
    assert "majority 60.0%" in page and "majority 100.0%" in page  # relu1 splits 6/4, the logits agree
    assert "disagrees" in page  # relu1's majority (1) is not the DkNN prediction (2)
    assert page.count("<figure>") == 10 and "row 9" in page  # 5 neighbours per layer, each an exemplar
    assert "No exemplars in this bundle" not in page
    assert events.client.get("/events/nope").status_code == 404


def test_a_bundle_without_exemplars_says_so(tiny_bundle: Path, tmp_path: Path) -> None:
    page = one_event(tiny_bundle, tmp_path).client.get("/events/ev-1").text
    assert "No exemplars in this bundle" in page and "row 4" in page


def test_a_record_without_its_input_cannot_be_reviewed(exemplar_bundle: Path, tmp_path: Path) -> None:
    record = orjson.loads(quarantine("ev-1"))
    del record["event"]["input"]
    topics = Topics()
    topics.add(Q, orjson.dumps({**record, "input_omitted": True}), T0)
    page = harness(exemplar_bundle, topics, tmp_path).client.get("/events/ev-1").text
    assert "left the input out" in page and 'name="verdict"' not in page


def test_the_agents_own_quarantine_records_are_read(
    exemplar_bundle: Path, tiny_problem: TinyProblem, tmp_path: Path
) -> None:
    far = np.random.default_rng(0).normal(0.0, 40.0, size=(5, 8)).astype(np.float32)  # nothing like the blobs
    values = [encode_event(f"real-{i}", x, "tiny", "1") for i, x in enumerate(far)]
    sink = MemorySink()
    pipeline_for(exemplar_bundle, MemorySource(values), sink, threshold=0.5, max_batch_wait_s=0).run(threading.Event())
    topics = Topics()
    for value, _key, headers in sink.topics["q"]:
        topics.add(Q, value, T0, headers=headers)
    h = harness(exemplar_bundle, topics, tmp_path)
    assert len(ids_on(h.client.get("/").text)) == len(sink.topics["q"]) > 0
    page = h.client.get("/events/real-0").text
    assert "<svg" in page and "relu1" in page and "by tiny 1" in page


# -- ingest and metrics -----------------------------------------------------------------------------


def test_bad_records_are_counted_and_skipped_and_offsets_follow_the_rows(exemplar_bundle: Path, tmp_path: Path) -> None:
    topics = Topics()
    topics.add(Q, b"not json", T0)
    topics.add(Q, b"[1, 2]", T0)
    topics.add(Q, b'{"event": {}, "dknn": {}}', T0)
    topics.add(Q, b"x" * (5 * 1024 * 1024), T0)
    topics.add(Q, quarantine("good"), T0)
    topics.add(R, b'{"schema": "dknn.review.v1"}')
    h = harness(exemplar_bundle, topics, tmp_path)
    assert ids_on(h.client.get("/").text) == ["good"]
    assert h.source.committed == {(Q, 0): 5, (R, 0): 1} == h.console.store.offsets()
    sample = h.telemetry.registry.get_sample_value
    for reason, count in (("bad_json", 1), ("schema", 1), ("no_event_id", 1), ("too_large", 1)):
        assert sample("dknn_review_console_records_skipped_total", {"topic": Q, "reason": reason}) == count
    assert sample("dknn_review_console_records_skipped_total", {"topic": R, "reason": "schema"}) == 1
    assert h.console.ingest.ready.is_set()


def test_review_metrics(exemplar_bundle: Path, tmp_path: Path) -> None:
    topics = Topics()
    records = {f"ev-{i}": quarantine(f"ev-{i}", model_prediction=1) for i in range(4)}
    for i, value in enumerate(records.values()):
        topics.add(Q, value, T0 + i)
    at = "2025-11-24T17:00:00Z"  # an hour after T0
    for event_id, verdict, label in (
        ("ev-0", "model_right", None),
        ("ev-1", "model_wrong", 2),
        ("ev-1", "out_of_scope", None),
    ):
        topics.add(R, review_record(records[event_id], verdict=verdict, label=label, reviewer="r", model_name="tiny",
                                    model_version="1", reviewed_at=at))  # fmt: skip
    topics.add(R, review_record(quarantine("gone"), verdict="model_right", reviewer="r", model_name="tiny",
                                model_version="1", reviewed_at=at))  # fmt: skip
    h = harness(exemplar_bundle, topics, tmp_path)
    sample = h.telemetry.registry.get_sample_value
    assert sample("dknn_reviews_total", {"verdict": "model_right"}) == 2
    assert sample("dknn_reviews_total", {"verdict": "model_wrong"}) == 1
    assert sample("dknn_reviews_total", {"verdict": "out_of_scope"}) == 1
    assert sample("dknn_review_console_events") == 4
    assert sample("dknn_review_coverage_ratio") == 0.5
    assert sample("dknn_quarantine_precision_ratio") == 0.5  # ev-1 out of scope, ev-0 a false alarm
    assert sample("dknn_review_latency_seconds_count") == 3  # the review of an event not held has none
    assert 3599 <= sample("dknn_review_latency_seconds_sum") / 3 <= 3600
    body = h.client.get("/metrics").text
    assert "dknn_quarantine_precision_ratio 0.5" in body
    listing = h.client.get("/").text
    assert "50.0%" in listing  # coverage and precision on the list


def test_readiness_waits_for_the_end_offsets(exemplar_bundle: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    assert store.new
    topics = Topics()
    for i in range(3):
        topics.add(Q, quarantine(f"ev-{i}"), T0)
    source = ListSource(topics.records)
    ingest = Ingest(source, store, ReviewTelemetry(), quarantine_topic=Q, reviews_topic=R, ends=source.ends())
    app = TestClient(create_app(Console(store, verify_bundle(exemplar_bundle, importing=False), ingest,
                                       ingest.telemetry, MemorySink(), R, Auth(Credentials()))))  # fmt: skip
    assert app.get("/readyz").status_code == 503 and app.get("/healthz").status_code == 200
    ingest.step(0)
    assert app.get("/readyz").status_code == 200
    store.close()
    assert not Store(tmp_path / "db").new  # it holds offsets: the consumer group's are trusted


def test_the_oldest_events_go_beyond_max_events(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", max_events=10)
    from agent.console.store import QuarantinedEvent

    rows = [QuarantinedEvent(f"e{i:02d}", T0 + i, 0, 0, 0.01, "r", "tiny", "1", b"{}") for i in range(25)]
    store.apply(rows, [], {(Q, 0): 25})
    page = store.page(Filters(), size=100)
    assert [row.event_id for row in page.rows] == [f"e{i:02d}" for i in reversed(range(15, 25))]
    assert store.summary.events == 10
