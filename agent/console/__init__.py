"""`dknn-agent review`: the reviewer's web console over the quarantine topic (docs/design.md §5.5).

One module per step of its pipeline: `store` (the SQLite index the pages read), `ingest` (the
consumer thread that fills it from the quarantine and reviews topics), `detail` (an event page's
content, read defensively out of an untrusted record), `render` (inputs as an image, a chart or
tokens; no markup from data), `auth` (credentials, sessions, CSRF), `app` (the Starlette routes),
`server` (wiring and the HTTP server's life); `untrusted` reads a record's fields for `ingest`
and `detail`, type-checked and bounded.
"""
