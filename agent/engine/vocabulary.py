"""A token vocabulary kept in the bundle, so a reviewer reads `the cat sat`, not `[17, 4, 230]`.

A text model's inputs are token ids; a quarantine record (and its neighbours' exemplars) quote the
ids. `dknn-agent fit --vocabulary FILE` keeps the id -> token table beside the model as
`vocabulary.json`, hashed in the manifest like every bundle file, so the review console shows the
very table the model was fitted with, not whichever tokenizer file is at hand.

Two input forms: a text file, one token per line (line i, counted from 0, is token id i: the
`vocab.txt` of BERT-style tokenizers), or, for a name ending in `.json`, a JSON array of strings
(where tokens may hold a newline). The form is chosen by the name, not the content: `[PAD]`, the
first line of many `vocab.txt` files, also starts a JSON array. Bounded like the rest of a bundle
(the agent reads every bundle file at start): at most `MAX_TOKENS` tokens of at most
`MAX_TOKEN_CHARS` characters each, `MAX_VOCABULARY_BYTES` in all, valid UTF-8, no empty token (an
empty line is a mistake far more often than a token).

In the bundle the table is always the JSON array, written compactly (`encode`) and read back with
the same checks (`parse_stored`), where any failure is a `BundleError` naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from agent.errors import BundleError, DataError

VOCABULARY_FILE = "vocabulary.json"
MAX_TOKENS = 1_000_000
MAX_TOKEN_CHARS = 256
# A real vocabulary is a few MB (BERT's 30,522 tokens: 230 kB; 250,000 sentencepiece pieces: ~4 MB).
MAX_VOCABULARY_BYTES = 64 * 1024 * 1024

__all__ = ["MAX_TOKENS", "MAX_TOKEN_CHARS", "MAX_VOCABULARY_BYTES", "VOCABULARY_FILE", "encode", "parse_stored", "read"]


def read(path: Path) -> tuple[str, ...]:
    """The tokens of a user's vocabulary file (`fit --vocabulary`), by id; a DataError that names the
    file and the line (or array element) at fault."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_VOCABULARY_BYTES + 1)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the vocabulary ({exc.strerror or exc})") from None
    if len(data) > MAX_VOCABULARY_BYTES:
        raise DataError(f"{path}: more than the {MAX_VOCABULARY_BYTES} bytes a vocabulary may have")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8") from None
    if path.suffix.lower() == ".json":
        return _checked(_json_array(text, str(path), DataError), str(path), DataError, lines=False)
    return _checked(_lines(text), str(path), DataError, lines=True)


def encode(tokens: tuple[str, ...]) -> bytes:
    """`vocabulary.json` as a bundle holds it: one compact JSON array, UTF-8."""
    return json.dumps(list(tokens), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def parse_stored(data: bytes, path: Path, size: int) -> tuple[str, ...]:
    """A bundle's verified `vocabulary.json` bytes, with the checks `read` applies and the manifest's
    token count; a BundleError naming the file otherwise."""
    if len(data) > MAX_VOCABULARY_BYTES:
        raise BundleError(f"{path}: more than the {MAX_VOCABULARY_BYTES} bytes a vocabulary may have")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{path}: not valid UTF-8") from None
    tokens = _checked(_json_array(text, str(path), BundleError), str(path), BundleError, lines=False)
    if len(tokens) != size:
        raise BundleError(f"{path}: {len(tokens)} tokens, the manifest says {size}")
    return tokens


def _lines(text: str) -> list[str]:
    """One token per line; only "\\n" ends a line (a token may hold other Unicode line breaks), a
    file of CRLF lines loses its "\\r"s, and the newline after the last token is not an empty token."""
    lines = text.split("\n")
    ended = len(lines) - 1  # lines followed by a "\n"; the last one is what follows the last "\n"
    if ended and all(line.endswith("\r") for line in lines[:ended]):  # CRLF
        lines = [line[:-1] for line in lines[:ended]] + lines[ended:]
    if lines[-1] == "":
        lines.pop()
    return lines


def _json_array(text: str, where: str, error: type[DataError] | type[BundleError]) -> list[object]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: line {exc.lineno}: not JSON ({exc.msg})") from None
    except RecursionError:
        raise error(f"{where}: not a JSON array of strings (nested too deeply)") from None
    if not isinstance(value, list):
        raise error(f"{where}: a JSON vocabulary is an array of strings, found {type(value).__name__}")
    return value


def _checked(
    tokens: Sequence[object], where: str, error: type[DataError] | type[BundleError], *, lines: bool
) -> tuple[str, ...]:
    if not tokens:
        raise error(f"{where}: the vocabulary is empty")
    if len(tokens) > MAX_TOKENS:
        raise error(f"{where}: {len(tokens)} tokens, more than the {MAX_TOKENS} a vocabulary may have")
    checked: list[str] = []
    for token_id, token in enumerate(tokens):
        at = f"line {token_id + 1} (token id {token_id})" if lines else f"element {token_id} (token id {token_id})"
        if not isinstance(token, str):
            raise error(f"{where}: {at}: a token is a string, found {type(token).__name__}")
        if not token:
            raise error(f"{where}: {at}: empty token")
        if len(token) > MAX_TOKEN_CHARS:
            raise error(f"{where}: {at}: {len(token)} characters, more than the {MAX_TOKEN_CHARS} a token may have")
        try:
            token.encode("utf-8")  # JSON's "\ud800" escapes make strings no UTF-8 can hold
        except UnicodeEncodeError:
            raise error(f"{where}: {at}: a lone surrogate, not valid UTF-8") from None
        checked.append(token)
    return tuple(checked)
