"""The review console in a real headless Chromium, against a real broker holding what the agent
quarantined (issue #24): the demo stream scored by `dknn-agent run` on the MNIST smoke bundle, and
the events of two non-image models (a tabular MLP's feature vectors, a GRU's token ids). What is
proven, as a reviewer sees it:

- the list shows the quarantined events; an event page shows the input rendered by its kind (an
  image, a chart of a vector, tokens read through the bundle's vocabulary) and, for every layer,
  the nearest training examples from the bundle's exemplars, rendered the same way;
- a verdict submitted in the browser lands on the reviews topic as a `dknn.review.v1` record keyed
  by the event id, and a second one supersedes the first on the page;
- an event whose id and attributes are markup and script renders as inert text: nothing runs.

With `DKNN_SCREENSHOT_DIR` set (`make screenshots`), the MNIST event page's screenshot is written
there: the README's picture comes from this test.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

import dknn_events
from agent.runtime.wire.review import parse_review
from connectors.kafka import KafkaSink, ensure_topics
from tests.conftest import Example
from tests.e2e.conftest import explain, free_port, run_cli
from tests.integration.agent_process import AgentProcess, read_all
from tests.support.browser import headless_chromium
from tests.support.environment import agent_environment

pytestmark = pytest.mark.e2e

# Markup a careless page would run: each sets a flag the test reads back from the page.
SCRIPT_ID = "<script>window.__pwned=1</script>"
ATTRIBUTE_MARKUP = '"><img src=x onerror="window.__pwned=2"><svg onload="window.__pwned=3">'


@dataclass(frozen=True)
class Console:
    url: str
    token: str


@dataclass(frozen=True)
class Stream:
    """Topics of one test, and what the agent quarantined on them."""

    bootstrap: str
    topics: dict[str, str]
    quarantined: list[str]  # event ids, in topic order


def new_topics(bootstrap: str, stem: str) -> dict[str, str]:
    topics = {kind: f"{stem}-{secrets.token_hex(3)}.{kind}" for kind in ("input", "quarantine", "dead_letter", "scores", "reviews")}  # fmt: skip
    ensure_topics(bootstrap, list(topics.values()), partitions=1)
    return topics


def publish(bootstrap: str, topic: str, events: list[bytes]) -> None:
    sink = KafkaSink(bootstrap)
    try:
        for value in events:
            sink.send(topic, value)
        sink.flush()
    finally:
        sink.close()


def quarantine(bundle: Path, bootstrap: str, topics: dict[str, str], events: int, work: Path) -> Stream:
    """Runs the agent over the `events` on the input topic and returns what it quarantined."""
    agent = AgentProcess(bundle, bootstrap, topics, f"agent-{topics['input']}", work / "agent.log").start()
    try:
        agent.wait_consumed(events, timeout_s=180)
        deadline = time.monotonic() + 60
        while agent.metrics().get("dknn_batches_committed_total{}", 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        held = sum(
            v for k, v in agent.metrics().items() if k.startswith("dknn_events_scored_total{") and "quarantined" in k
        )
    finally:
        assert agent.terminate() == 0, (work / "agent.log").read_text()[-3000:]
    records = read_all(bootstrap, topics["quarantine"], f"read-{topics['quarantine']}", expect_at_least=int(held))
    assert len(records) >= held > 0, f"{len(records)} quarantine records, {held} quarantined"
    return Stream(bootstrap, topics, [json.loads(r.value)["event"]["event_id"] for r in records])


@contextmanager
def review_console(bundle: Path, stream: Stream, work: Path) -> Iterator[Console]:
    """`dknn-agent review` as an operator starts it (a token file), ready once it has read the topic."""
    token = secrets.token_urlsafe(24)
    token_file = work / "console-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    port = free_port()
    command = [
        sys.executable, "-m", "agent.cli", "review", "--artifacts", str(bundle),
        "--bootstrap-servers", stream.bootstrap, "--quarantine-topic", stream.topics["quarantine"],
        "--reviews-topic", stream.topics["reviews"], "--group", f"console-{stream.topics['input']}",
        "--port", str(port), "--token-file", str(token_file), "--database", str(work / "console.sqlite"),
    ]  # fmt: skip
    log = work / "console.log"
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=agent_environment())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while _status(url + "/readyz") != 200:
            assert process.poll() is None, f"the console exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the console was not ready in 90 s: {log.read_text()[-3000:]}"
            time.sleep(0.3)
        assert f"review console: {url}/" in log.read_text(), log.read_text()[-3000:]
        yield Console(url, token)
    finally:
        process.terminate()
        code = process.wait(30)
    assert code == 0, f"the console exited {code} on SIGTERM: {log.read_text()[-3000:]}"


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def log_in(browser: WebDriver, console: Console, name: str = "ana") -> None:
    browser.get(console.url + "/")
    assert "/login" in browser.current_url, browser.current_url  # nothing without credentials
    browser.find_element(By.NAME, "name").send_keys(name)
    browser.find_element(By.NAME, "token").send_keys(console.token)
    submit(browser, browser.find_element(By.CSS_SELECTOR, "form button"))
    assert browser.find_elements(By.CSS_SELECTOR, "table tbody tr"), browser.page_source[:2000]


def listed_ids(browser: WebDriver) -> list[str]:
    return [link.text for link in browser.find_elements(By.CSS_SELECTOR, "table tbody td.mono a")]


def open_event(browser: WebDriver, event_id: str) -> None:
    submit(browser, browser.find_element(By.LINK_TEXT, event_id))
    assert browser.find_element(By.TAG_NAME, "h1").text == event_id


INPUT_PANEL = "//section[h2='Input']"


def shown(browser: WebDriver, selector: str) -> list:
    """Elements matching `selector` (CSS, or XPath from "/") that the browser actually rendered: an
    image it decoded, a chart with a size."""
    elements = browser.find_elements(By.XPATH if selector.startswith("/") else By.CSS_SELECTOR, selector)
    return [e for e in elements if browser.execute_script("return arguments[0].getBoundingClientRect().width > 0 && (arguments[0].tagName !== 'IMG' || arguments[0].naturalWidth > 0)", e)]  # fmt: skip


def layer_sections(browser: WebDriver) -> list:
    return browser.find_elements(By.CSS_SELECTOR, "section.layer")


def give_verdict(browser: WebDriver, verdict: str, label: str | None = None, note: str = "") -> None:
    browser.find_element(By.CSS_SELECTOR, f"input[name=verdict][value={verdict}]").click()
    if label is not None:
        Select(browser.find_element(By.NAME, "label")).select_by_value(label)
    if note:
        browser.find_element(By.NAME, "note").send_keys(note)
    submit(browser, browser.find_element(By.XPATH, "//button[contains(., 'Record the verdict')]"))


def submit(browser: WebDriver, button: WebElement) -> None:
    """Clicks a form's button and waits for the page the POST redirects to (click returns before it loads).

    The old page is marked and the wait is for a loaded document without the mark. Waiting for the
    button to go stale instead raced the navigation: asked about an element whose document was being
    replaced, Chromium 156's driver answers neither "stale" nor "present" but "Node with given id
    does not belong to the document". While the page changes, a question may fail outright, so the
    wait asks again on any driver error.
    """
    browser.execute_script("window.__dknnLeft = true")
    button.click()
    WebDriverWait(browser, 30, ignored_exceptions=(WebDriverException,)).until(
        lambda b: b.execute_script("return window.__dknnLeft === undefined && document.readyState === 'complete'")
    )


def nothing_ran(browser: WebDriver) -> None:
    assert browser.execute_script("return window.__pwned") is None
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018  (reading it is the check)


def test_a_reviewer_sees_the_demo_streams_quarantine_and_records_verdicts(
    kafka_broker: str, mnist_bundle: Path, tmp_path: Path
) -> None:
    topics = new_topics(kafka_broker, "console-mnist")
    produced = run_cli(
        "produce-demo", "--bootstrap-servers", kafka_broker, "--topic", topics["input"], "--artifacts", mnist_bundle,
        "--count", "150", "--mix", "clean=0.5,noise=0.2,rotated=0.3", "--seed", "3",
    )  # fmt: skip
    assert produced.returncode == 0, explain(produced)
    manifest = json.loads((mnist_bundle / "manifest.json").read_text())
    model, version = manifest["model"]["name"], manifest["model"]["version"]
    noise = np.random.default_rng(0).uniform(0, 1, (1, 28, 28)).astype(np.float32)
    hostile = dknn_events.inference_event(
        SCRIPT_ID, noise, model_name=model, model_version=version, attributes={"comment": ATTRIBUTE_MARKUP}
    )
    publish(kafka_broker, topics["input"], [hostile])
    stream = quarantine(mnist_bundle, kafka_broker, topics, 151, tmp_path)
    assert SCRIPT_ID in stream.quarantined  # uniform noise: the agent holds it

    with review_console(mnist_bundle, stream, tmp_path) as console, headless_chromium() as browser:
        log_in(browser, console)
        listed = listed_ids(browser)
        assert listed and set(listed) <= set(stream.quarantined)
        assert len(listed) == min(len(set(stream.quarantined)), 50)
        nothing_ran(browser)  # the hostile id is on this page or a later one, as text

        digit = next(event_id for event_id in listed if event_id != SCRIPT_ID)
        open_event(browser, digit)
        assert len(shown(browser, INPUT_PANEL + "//img")) == 1  # the 28x28 input, as an image
        sections = layer_sections(browser)
        assert len(sections) == len(manifest["layers"])
        for section in sections:  # every layer: its nearest training digits from the exemplars
            assert section.find_elements(By.CSS_SELECTOR, "figure img"), section.text
        assert len(shown(browser, "section.layer figure img")) >= len(sections)
        assert browser.find_elements(By.CSS_SELECTOR, ".bars .bar")  # a p-value bar per class
        if directory := os.environ.get("DKNN_SCREENSHOT_DIR"):
            Path(directory).mkdir(parents=True, exist_ok=True)
            browser.set_window_size(1280, browser.execute_script("return document.body.scrollHeight") + 40)
            browser.save_screenshot(str(Path(directory) / "review-console-event.png"))

        answer = browser.find_element(By.XPATH, "//th[.='model prediction']/following-sibling::td").text
        other = str((int(answer) + 1) % 10)
        give_verdict(browser, "model_wrong", other, note="a 7 with a <b>bold</b> stroke")
        assert "model wrong" in browser.find_element(By.TAG_NAME, "body").text
        give_verdict(browser, "model_right")
        latest = browser.find_element(By.XPATH, "//p[starts-with(normalize-space(.), 'Latest review')]").text
        assert "model right" in latest and "model wrong" not in latest, latest

        reviews = read_all(kafka_broker, topics["reviews"], f"read-{topics['reviews']}", expect_at_least=2)
        assert [r.key for r in reviews] == [digit.encode(), digit.encode()]  # keyed by the event id
        first, second = (parse_review(r.value) for r in reviews)
        assert (first.verdict, first.label, first.reviewer, first.note) == (
            "model_wrong",
            int(other),
            "ana",
            "a 7 with a <b>bold</b> stroke",
        )
        assert (second.verdict, second.label) == ("model_right", None)
        assert second.reviewed_time >= first.reviewed_time

        browser.get(console.url + "/?review=reviewed")
        assert listed_ids(browser) == [digit]

        browser.get(console.url + "/")
        while SCRIPT_ID not in listed_ids(browser):  # page back until the hostile event shows
            submit(browser, browser.find_element(By.PARTIAL_LINK_TEXT, "older events"))
        nothing_ran(browser)
        open_event(browser, SCRIPT_ID)  # the <h1> text is the markup itself
        nothing_ran(browser)
        assert (
            browser.find_elements(By.CSS_SELECTOR, "script") == []
        )  # no script element from the event (the page has none of its own)
        row = browser.find_element(By.XPATH, "//th[.='comment']/following-sibling::td").text
        assert row == ATTRIBUTE_MARKUP
        assert "&lt;script&gt;" in browser.page_source


def refit_with_exemplars(example: Example, out: Path, *extra: str) -> Path:
    """The example's bundle again, keeping its training inputs as exemplars (off by default for a user's data)."""
    result = run_cli(
        "fit", "--model", example.work / "model.pt2", "--train", example.work / "train.npz",
        "--calibration", example.work / "calibration.npz", "--exemplars", "inputs", "--out", out, "--quiet", *extra,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, explain(result)
    return out


@pytest.mark.parametrize("family", ["tabular", "text"])
def test_a_non_image_models_inputs_and_neighbours_are_rendered_by_kind(
    family: str, kafka_broker: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    example: Example = request.getfixturevalue(f"{family}_example")
    if family == "tabular":
        bundle = refit_with_exemplars(example, tmp_path / "bundle")
        with np.load(example.work / "test.npz") as test:
            rows = {"x": np.concatenate([test["x"][:10], np.load(example.work / "ood" / "noise.npy")[:20]])}
    else:
        extra = ("--output", "logits", "--vocabulary", str(example.work / "vocabulary.txt"))
        bundle = refit_with_exemplars(example, tmp_path / "bundle", *extra)
        with np.load(example.work / "ood" / "random-tokens.npz") as ood:
            rows = {name: ood[name][:30] for name in ("input_ids", "attention_mask")}
    manifest = json.loads((bundle / "manifest.json").read_text())
    inputs = manifest["inputs"]
    model, version = manifest["model"]["name"], manifest["model"]["version"]
    count = len(next(iter(rows.values())))
    events = []
    for i in range(count):
        if len(inputs) == 1:
            x = next(iter(rows.values()))[i]
            events.append(dknn_events.inference_event(f"{family}-{i}", x, model_name=model, model_version=version, dtype=inputs[0]["dtype"]))  # fmt: skip
        else:
            arrays = {spec["name"]: rows[spec["name"]][i] for spec in inputs}
            dtypes = {spec["name"]: spec["dtype"] for spec in inputs}
            events.append(dknn_events.inference_event(f"{family}-{i}", inputs=arrays, model_name=model, model_version=version, dtype=dtypes))  # fmt: skip
    topics = new_topics(kafka_broker, f"console-{family}")
    publish(kafka_broker, topics["input"], events)
    stream = quarantine(bundle, kafka_broker, topics, count, tmp_path)

    with review_console(bundle, stream, tmp_path) as console, headless_chromium() as browser:
        log_in(browser, console)
        listed = listed_ids(browser)
        assert listed and set(listed) <= set(stream.quarantined)
        open_event(browser, listed[0])
        assert not browser.find_elements(By.CSS_SELECTOR, "img")  # nothing here is an image
        sections = layer_sections(browser)
        assert len(sections) == len(manifest["layers"])
        if family == "tabular":
            assert len(shown(browser, INPUT_PANEL + "//*[local-name()='svg']")) == 1  # a chart of the 64 features
            for section in sections:
                assert section.find_elements(By.CSS_SELECTOR, "figure svg.chart"), section.text
        else:
            vocabulary = set((example.work / "vocabulary.txt").read_text().split("\n"))
            tokens = browser.find_elements(By.XPATH, INPUT_PANEL + "//div[contains(@class, 'tokens')]/span")
            assert tokens and {t.text for t in tokens} <= vocabulary, [t.text for t in tokens][:10]
            for section in sections:
                assert section.find_elements(By.CSS_SELECTOR, "figure .tokens span"), section.text
        give_verdict(browser, "out_of_scope", note="not a sequence the model was built for")
        reviews = read_all(kafka_broker, topics["reviews"], f"read-{topics['reviews']}", expect_at_least=1)
        assert [(r.key, parse_review(r.value).verdict) for r in reviews] == [(listed[0].encode(), "out_of_scope")]
