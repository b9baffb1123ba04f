"""The review console (`dknn-agent review`) against the real broker: the command's life, a verdict's
round trip through the reviews topic, and the console benchmark on a few records (so it cannot rot)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from agent.runtime.wire.review import parse_review
from connectors.kafka import KafkaSink, ensure_topics, read_topic
from dknn_lab.bench.console import ConsoleBenchOptions, quarantine_records, run_console_bench
from tests.support.environment import agent_environment

pytestmark = pytest.mark.integration


def get(url: str, data: dict[str, str] | None = None, cookie: str = "") -> tuple[int, str, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(), response.headers.get("Set-Cookie", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers.get("Set-Cookie", "")


@contextmanager
def serving(command: list[str]) -> Iterator[str]:
    """`dknn-agent review` run as `command`: its printed URL once it is ready; then SIGTERM, and exit 0."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=agent_environment()
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.match(r"review console: (http://127\.0\.0\.1:\d+/)$", line.strip())
        assert match, f"no URL line: {line!r}"
        url = match.group(1)
        deadline = time.monotonic() + 60
        while get(url + "readyz")[0] != 200:
            assert time.monotonic() < deadline, "the console never caught up"
            time.sleep(0.2)
        yield url
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_review_serves_stores_a_verdict_and_stops_on_sigterm(
    kafka_bootstrap: str, tiny_bundle: Path, unique_name: str, tmp_path: Path
) -> None:
    quarantine, reviews = f"{unique_name}-q", f"{unique_name}-r"
    ensure_topics(kafka_bootstrap, [quarantine, reviews])
    records, model, version = quarantine_records(tiny_bundle, 30, seed=1)
    with KafkaSink(kafka_bootstrap) as sink:
        for value in records:
            sink.send(quarantine, value, headers=[("dknn.bundle.model", model.encode()),
                                                   ("dknn.bundle.version", version.encode())])  # fmt: skip
        sink.flush(60)
    command = [
        sys.executable, "-m", "agent.cli", "review", "--artifacts", str(tiny_bundle),
        "--bootstrap-servers", kafka_bootstrap, "--quarantine-topic", quarantine, "--reviews-topic", reviews,
        "--group", unique_name, "--port", "0", "--database", str(tmp_path / "console.db"),
    ]  # fmt: skip
    with serving(command) as url:
        assert get(url + "healthz")[0] == 200
        status, listing, cookie = get(url)
        assert status == 200 and listing.count('href="/events/') == 30
        event_id = "bench-0000007"
        status, page, _ = get(url + "events/" + event_id, cookie=cookie.split(";")[0])
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        status, page, _ = get(
            url + "events/" + event_id, {"csrf": csrf, "verdict": "out_of_scope", "note": "noise"}, cookie.split(";")[0]
        )
        assert status == 200 and "Latest review:" in page
        (record,) = read_topic(kafka_bootstrap, reviews, max_records=10)
        assert record.key == event_id.encode() and parse_review(record.value).verdict == "out_of_scope"
        deadline = time.monotonic() + 30
        while 'dknn_reviews_total{verdict="out_of_scope"} 1.0' not in get(url + "metrics")[1]:
            assert time.monotonic() < deadline, "the review was never read back from the topic"
            time.sleep(0.2)
    # The group has committed both topics to their end; a new database must still read them from the start.
    command[-1] = str(tmp_path / "fresh.db")
    with serving(command) as url:
        status, listing, _ = get(url + "?review=out_of_scope")
        assert status == 200 and re.findall(r'href="/events/([^"]+)"', listing) == [event_id]


def test_the_console_benchmark_runs_on_a_few_records(kafka_bootstrap: str, tiny_bundle: Path, tmp_path: Path) -> None:
    result = run_console_bench(
        ConsoleBenchOptions(tiny_bundle, kafka_bootstrap, count=300, requests=5, out_dir=tmp_path, name="console")
    )
    assert result.events_held == 300 and result.reviews == 15
    assert set(result.pages) == {"first page", "filtered page", "page 21", "event page"}
    assert result.pages["first page"].rows == 50 and result.pages["event page"].rows is None
    written = json.loads((tmp_path / "console.json").read_text())
    assert written["benchmark"] == "console" and written["pages"]["filtered page"]["ms"]["p95"] > 0
    assert (tmp_path / "console.md").read_text().startswith("# Review console: tiny")
    assert orjson.loads(quarantine_records(tiny_bundle, 1, seed=0)[0][0])["event"]["event_id"] == "bench-0000000"
