"""`dknn-agent review`: the console's parts wired together, and the life of its HTTP server.

Start-up fails fast with one line: a bad bundle or credential file, an address that cannot be
bound (exit 3), a broker that cannot be reached or a topic that does not exist (exit 4). Then:

1. the store opens; a new (or emptied) database resets the console's consumer group, so both
   topics are read from their beginning: the group's offsets described a file that is gone;
2. the topics' end offsets are read (readiness waits for the store to reach them), the consumer
   joins and the ingest thread starts;
3. uvicorn serves the app on a socket bound here (so a bad address is a ConfigError, and port 0
   picks a free port that the printed URL names) in a thread of its own;
4. SIGTERM or SIGINT: the server stops taking requests and finishes those in flight, the ingest
   thread finishes its poll (stored and committed, or not at all), everything closes, exit 0.

The database defaults to a temporary file removed at exit: the console's state is derived, and
without `--database` it is rebuilt from the topics at every start.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import tempfile
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from agent.console.app import Console, create_app
from agent.console.auth import Auth, Credentials
from agent.console.ingest import POLL_RECORDS, Ingest
from agent.console.store import Store
from agent.engine.bundle import verify_bundle
from agent.errors import ConfigError
from agent.runtime.telemetry import ReviewTelemetry
from connectors.kafka_security import KafkaSecurity

log = logging.getLogger("dknn.console")

MAX_CONNECTIONS = 64  # requests served at once; more get 503


@dataclass(frozen=True)
class ConsoleOptions:
    artifacts: Path
    bootstrap_servers: str
    quarantine_topic: str
    reviews_topic: str
    group: str
    host: str
    port: int
    credentials: Credentials
    database: Path | None
    max_events: int
    security: KafkaSecurity


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: any free port); ConfigError naming the address otherwise."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this. uvicorn's own binding sets it, a socket handed to it does not:
        # without it every response after the first on a keep-alive connection waited 40 ms (Nagle
        # holding the body until the client's delayed ACK of the headers).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
    except (OSError, OverflowError) as exc:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc})") from None
    return sock


def run_console(
    options: ConsoleOptions, stop: threading.Event | None = None, on_start: Callable[[str], None] | None = None
) -> int:
    """Serves until SIGTERM/SIGINT (or `stop`, for a caller running it in a thread of its own; signals
    are only handled in the main thread); `on_start` is given the URL once the socket listens."""
    from connectors.kafka import KafkaSink, KafkaSource, end_offsets, forget_group

    stop = stop or threading.Event()
    bundle = verify_bundle(options.artifacts, importing=False)  # the model is never built: no code runs
    with ExitStack() as opened:
        sock = bind(options.host, options.port)
        opened.callback(sock.close)
        database = options.database
        if database is None:
            database = Path(opened.enter_context(tempfile.TemporaryDirectory(prefix="dknn-review-"))) / "console.db"
        store = Store(database, max_events=options.max_events)
        opened.callback(store.close)
        servers, security = options.bootstrap_servers, options.security
        topics = [options.quarantine_topic, options.reviews_topic]
        if store.new:
            forget_group(servers, options.group, security=security)
        ends = end_offsets(servers, topics, security=security)
        source = opened.enter_context(
            KafkaSource(servers, topics, options.group, max_poll_records=POLL_RECORDS, security=security)
        )
        sink = opened.enter_context(KafkaSink(servers, security=security))
        telemetry = ReviewTelemetry()
        ingest = Ingest(
            source,
            store,
            telemetry,
            quarantine_topic=options.quarantine_topic,
            reviews_topic=options.reviews_topic,
            ends=ends,
        )
        console = Console(store, bundle, ingest, telemetry, sink, options.reviews_topic, Auth(options.credentials))
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(console),
                log_level="warning",
                access_log=False,
                lifespan="off",
                limit_concurrency=MAX_CONNECTIONS,
                timeout_keep_alive=5,
                server_header=False,
            )
        )
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
        consumer = threading.Thread(target=ingest.run, args=(stop,), name="review-ingest", daemon=True)
        web = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])), name="review-http", daemon=True
        )
        consumer.start()
        web.start()
        port = sock.getsockname()[1]
        shown = f"[{options.host}]" if ":" in options.host else options.host
        url = f"http://{shown}:{port}/"
        print(f"review console: {url}", flush=True)
        if on_start is not None:
            on_start(url)
        while not stop.wait(0.5):
            if not web.is_alive():
                raise ConfigError(f"the HTTP server on {options.host}:{port} stopped; see the log above")
        server.should_exit = True
        web.join(30)
        consumer.join(30)
        log.info("review console stopped")
    return 0
