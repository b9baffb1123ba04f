"""The review console benchmark: ingest and page times over a real broker (`dknn-agent bench console`).

N quarantine records shaped as the agent writes them (the bundle's input as a v1 event, p-values for
every class, five neighbours per layer with their label split) are produced to a fresh topic, with
reviews of one in twenty events on a reviews topic. Then the console (`agent.console.server`, the
code `dknn-agent review` runs, on 127.0.0.1 with a database in a temporary directory) starts; the
ingest time runs from its start until /readyz says it holds every record the topics had. Then each
page is fetched `requests` times in a row over HTTP (one keep-alive connection, the console's
uvicorn): the first page of the list, a filtered page (model prediction 3 or the last class, and
credibility below 0.05), a page 20 pages deep (keyset paging: it should cost what the first does),
and an event page. Latencies are wall time per request at the client.

Model predictions, DkNN predictions and credibilities are drawn at random (seeded): the numbers
measure the console, not a model. The broker, the producer and the console share this machine's cores.
"""

from __future__ import annotations

import http.client
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson

from agent.console.auth import Credentials
from agent.console.server import ConsoleOptions, run_console
from agent.engine.bundle import verify_bundle
from agent.errors import ConnectorError
from agent.runtime.events import encode_event
from agent.runtime.wire.review import REVIEW_VERDICTS, review_record
from connectors.kafka import KafkaSink, ensure_topics
from connectors.kafka_security import KafkaSecurity
from dknn_lab.bench.reports import MISSING, ModelVersion, now, save_report, table

QUANTILES = (("p50", 50), ("p95", 95), ("max", 100))
TARGET_P95_MS = 300.0


@dataclass(frozen=True)
class ConsoleBenchOptions:
    artifacts: Path
    bootstrap_servers: str
    count: int = 100_000
    requests: int = 200
    review_share: float = 0.05
    partitions: int = 3
    seed: int = 0
    out_dir: Path = Path("docs/results")
    name: str | None = None  # results stem (default: console-MODEL)


@dataclass(frozen=True)
class PageTimes:
    path: str
    requests: int
    ms: dict[str, float]  # QUANTILES by name
    rows: int | None  # events listed on the page (None: not a list page)


@dataclass(frozen=True)
class ConsoleResult:
    benchmark: str = field(default="console", init=False)
    created_at: str = field(default_factory=now, init=False)
    bundle: ModelVersion
    cores: int
    events: int
    reviews: int
    mean_record_bytes: float
    produce_s: float
    ingest_s: float  # console start until /readyz: every record stored
    ingest_events_per_s: float
    events_held: int
    database_mb: float
    pages: dict[str, PageTimes]
    target_p95_ms: float


def quarantine_records(artifacts: Path, count: int, seed: int) -> tuple[list[bytes], str, str]:
    """`count` quarantine records for the bundle's model, and its name and version (their headers)."""
    bundle = verify_bundle(artifacts, importing=False)
    manifest = bundle.manifest
    rng = np.random.default_rng(seed)
    spec = manifest.inputs[0]
    if spec.dtype.startswith(("int", "uint")) or spec.dtype == "bool":
        low, high = spec.value_range or (0, 1)
        x = rng.integers(int(low), int(high) + 1, size=spec.shape).astype(spec.dtype)
    else:
        x = rng.random(spec.shape, dtype=np.float32).astype(spec.dtype)
    event = orjson.loads(encode_event("template", x, manifest.model.name, manifest.model.version))
    classes = manifest.model.num_classes
    k = manifest.k
    model_predictions = rng.integers(0, classes, size=count)
    predictions = rng.integers(0, classes, size=count)
    credibilities = np.round(rng.uniform(0.0, 0.1, size=count), 6)
    neighbour_ids = rng.integers(0, manifest.train.size, size=(count, 5))
    records = []
    for i in range(count):
        p_values = np.round(rng.uniform(0.0, credibilities[i], size=classes), 6)
        p_values[predictions[i]] = credibilities[i]
        labels = [int(v) for v in rng.integers(0, classes, size=5)]
        split = {str(predictions[i]): k - 2, str(model_predictions[i]): 2} if k > 2 else {str(predictions[i]): k}
        block = {
            "prediction": int(predictions[i]),
            "credibility": float(credibilities[i]),
            "confidence": 0.9,
            "model_prediction": int(model_predictions[i]),
            "verdict": "quarantined",
            "p_values": [float(p) for p in p_values],
            "served_label": None,
            "reason": f"credibility {credibilities[i]:.4f} below threshold 0.1",
            "neighbors": {
                name: {"ids": [int(v) for v in neighbour_ids[i]], "labels": labels, "label_counts": split}
                for name in manifest.layer_names
            },
            "source": {"topic": "inference-events", "partition": i % 3, "offset": i // 3},
        }
        records.append(orjson.dumps({"event": {**event, "event_id": f"bench-{i:07d}"}, "dknn": block}))
    return records, manifest.model.name, manifest.model.version


def reviews(records: list[bytes], share: float, model: str, version: str, seed: int) -> list[tuple[bytes, bytes]]:
    """(key, review) for a seeded `share` of the records: model right, wrong or out of scope alike."""
    rng = np.random.default_rng(seed + 1)
    chosen = rng.choice(len(records), size=int(len(records) * share), replace=False)
    out = []
    for i in sorted(chosen.tolist()):
        record = orjson.loads(records[i])
        answer = record["dknn"]["model_prediction"]
        verdict = REVIEW_VERDICTS[i % 3]
        label = (answer + 1) % len(record["dknn"]["p_values"]) if verdict == "model_wrong" else None
        value = review_record(
            record, verdict=verdict, label=label, reviewer="bench", model_name=model, model_version=version,
            reviewed_at=datetime.now(UTC),
        )  # fmt: skip
        out.append((record["event"]["event_id"].encode(), value))
    return out


def _produce(
    bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes]], headers: list[tuple[str, bytes]]
) -> None:
    with KafkaSink(bootstrap) as sink:
        for start in range(0, len(values), 5000):
            for key, value in values[start : start + 5000]:
                sink.send(topic, value, key=key, headers=headers)
            sink.flush(300)


def _times(connection: http.client.HTTPConnection, path: str, requests: int) -> tuple[np.ndarray, str]:
    elapsed = []
    body = b""
    for _ in range(requests):
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        elapsed.append(time.perf_counter() - started)
        if response.status != 200:
            raise ConnectorError(f"GET {path}: {response.status}")
    return 1000 * np.array(elapsed), body.decode()


def run_console_bench(options: ConsoleBenchOptions) -> ConsoleResult:
    run_id = uuid.uuid4().hex[:8]
    quarantine_topic, reviews_topic = f"bench-{run_id}-quarantine", f"bench-{run_id}-reviews"
    ensure_topics(options.bootstrap_servers, [quarantine_topic], partitions=options.partitions)
    ensure_topics(options.bootstrap_servers, [reviews_topic])
    records, model, version = quarantine_records(options.artifacts, options.count, options.seed)
    reviewed = reviews(records, options.review_share, model, version, options.seed)
    headers = [("dknn.bundle.model", model.encode()), ("dknn.bundle.version", version.encode())]
    started = time.monotonic()
    _produce(options.bootstrap_servers, quarantine_topic, [(None, value) for value in records], headers)
    _produce(options.bootstrap_servers, reviews_topic, [(key, value) for key, value in reviewed], [])
    produce_s = time.monotonic() - started
    mean_bytes = float(np.mean([len(value) for value in records]))
    del records

    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"dknn-console-bench-{run_id}"
    work.mkdir(parents=True)
    database = work / "console.db"
    stop = threading.Event()
    url: list[str] = []
    console = ConsoleOptions(
        artifacts=options.artifacts,
        bootstrap_servers=options.bootstrap_servers,
        quarantine_topic=quarantine_topic,
        reviews_topic=reviews_topic,
        group=f"bench-console-{run_id}",
        host="127.0.0.1",
        port=0,
        credentials=Credentials(),
        database=database,
        max_events=1_000_000,
        security=KafkaSecurity(),
    )
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            run_console(console, stop, on_start=url.append)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=serve, name="console", daemon=True)
    thread.start()
    try:
        while not url:
            if errors or not thread.is_alive():
                raise ConnectorError(f"the console did not start: {errors[0] if errors else 'it exited'}")
            time.sleep(0.05)
        where = urlsplit(url[0])
        connection = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=60)
        while True:
            connection.request("GET", "/readyz")
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                break
            if time.monotonic() - started > 1800:
                raise ConnectorError("the console did not catch up within 30 minutes")
            time.sleep(0.2)
        ingest_s = time.monotonic() - started
        _, listing = _times(connection, "/", 1)
        _, exposition = _times(connection, "/metrics", 1)
        held = int(float(re.search(r"^dknn_review_console_events (\S+)$", exposition, re.M).group(1)))  # type: ignore[union-attr]
        classes = verify_bundle(options.artifacts, importing=False).manifest.model.num_classes
        deep = "/"
        for _ in range(20):
            _, body = _times(connection, deep, 1)
            found = re.search(r'<a href="(/\?[^"]+)">older events', body)
            if not found:
                break
            deep = found.group(1).replace("&amp;", "&")
        first_event = re.search(r'href="(/events/[^"]+)"', listing).group(1)  # type: ignore[union-attr]
        paths = {
            "first page": "/",
            "filtered page": f"/?model={min(3, classes - 1)}&cmax=0.05",
            "page 21": deep,
            "event page": first_event,
        }
        pages = {}
        for name, path in paths.items():
            ms, body = _times(connection, path, options.requests)
            pages[name] = PageTimes(
                path=path,
                requests=options.requests,
                ms={q: round(float(np.percentile(ms, p)), 1) for q, p in QUANTILES},
                rows=None
                if path.startswith("/events/")
                else len(re.findall(r'<td class="mono"><a href="/events/', body)),
            )
        connection.close()
    finally:
        stop.set()
        thread.join(60)
    database_mb = sum(path.stat().st_size for path in work.iterdir()) / 2**20
    for path in work.iterdir():
        path.unlink()
    work.rmdir()
    manifest = verify_bundle(options.artifacts, importing=False).manifest
    result = ConsoleResult(
        bundle=ModelVersion(manifest.model.name, manifest.model.version),
        cores=os.cpu_count() or 0,
        events=options.count,
        reviews=len(reviewed),
        mean_record_bytes=round(mean_bytes, 1),
        produce_s=round(produce_s, 1),
        ingest_s=round(ingest_s, 1),
        ingest_events_per_s=round((options.count + len(reviewed)) / ingest_s, 1),
        events_held=held,
        database_mb=round(database_mb, 1),
        pages=pages,
        target_p95_ms=TARGET_P95_MS,
    )
    save_report(result, markdown(result), options.out_dir, options.name or f"console-{result.bundle.model}")
    return result


def markdown(result: ConsoleResult) -> str:
    lines = [
        f"# Review console: {result.bundle.model} {result.bundle.version}",
        "",
        f"{result.events:,} quarantine records ({result.mean_record_bytes:,.0f} bytes each on average) and "
        f"{result.reviews:,} reviews on a real Kafka broker on 127.0.0.1; the console (`dknn-agent review`'s code, "
        f"SQLite database, uvicorn) on the same {result.cores}-core machine.",
        "",
        *table(
            ["produced in", "ingested in (start to /readyz)", "records/s ingested", "events held", "database"],
            [
                [
                    f"{result.produce_s:g} s",
                    f"{result.ingest_s:g} s",
                    f"{result.ingest_events_per_s:,.0f}",
                    f"{result.events_held:,}",
                    f"{result.database_mb:,.0f} MB",
                ]
            ],
        ),
        "",
        f"Each page fetched {next(iter(result.pages.values())).requests} times in a row over one keep-alive HTTP "
        f"connection (milliseconds at the client; target p95 < {result.target_p95_ms:g} ms):",
        "",
        *table(
            ["page", "path", "rows", *(q for q, _ in QUANTILES)],
            [
                [
                    name,
                    f"`{times.path[:60]}`",
                    MISSING if times.rows is None else times.rows,
                    *(f"{times.ms[q]:g}" for q, _ in QUANTILES),
                ]  # fmt: skip
                for name, times in result.pages.items()
            ],
        ),
    ]
    return "\n".join(lines) + "\n"
