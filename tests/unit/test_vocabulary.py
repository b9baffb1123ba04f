"""A text model's vocabulary in the bundle (`fit --vocabulary`, agent.engine.vocabulary): read from a
vocab.txt or a JSON array with a clear error naming the line, kept as `vocabulary.json`, hashed and
verified like every bundle file, refused for a model without token ids, and carried through
`extend` untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from torch import nn

from agent.engine import vocabulary as vocabulary_module
from agent.engine.bundle import verify_bundle
from agent.engine.data_files import Dataset
from agent.engine.dknn import DkNN
from agent.engine.extend import extend_bundle
from agent.engine.fit import FitOptions, fit_bundle
from agent.engine.manifest import PROGRAM_FILE, Manifest, ModelSpec
from agent.engine.program import export_program
from agent.errors import BundleError, ConfigError, DataError
from agent.runtime.reviews import read_reviews
from agent.runtime.wire.review import review_record
from dknn_events import inference_event
from tests.conftest import TINY_LAYERS, TinyProblem, tiny_model
from tests.unit.test_bundle import rehash, rewrite_manifest

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TOKENS = ("[PAD]", "the", "cat", "sat", "on", "a", "mat", "##s", "é", "猫")
LENGTH = 6


class TokenModel(nn.Module):
    """Token ids in, three classes out: embedding, mean, one hidden layer (untrained: fit does not care)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(TOKENS), 8)
        self.hidden = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.embed(ids).mean(1))))


def token_data(n: int, seed: int) -> Dataset:
    ids = np.random.default_rng(seed).integers(0, len(TOKENS), (n, LENGTH)).astype(np.int64)
    return Dataset(x=ids, y=(ids[:, 0] % 3).astype(np.int64), source=f"tokens:seed{seed}")


def fit_tokens(out: Path, vocabulary: tuple[str, ...] | None) -> Path:
    torch.manual_seed(0)
    program = export_program(TokenModel().eval(), (torch.zeros(2, LENGTH, dtype=torch.int64),))
    fit_bundle(
        model=program,
        model_spec=ModelSpec(name="tokens", version="1", program=PROGRAM_FILE, num_classes=3),
        layers={"hidden": "none", "head": "none"},
        train=token_data(300, 1),
        calibration=token_data(100, 2),
        out=out,
        options=FitOptions(k=10, n_trees=5, progress=False),
        vocabulary=vocabulary,
    )
    return out


@pytest.fixture(scope="module")
def token_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_tokens(tmp_path_factory.mktemp("vocabulary") / "tokens", TOKENS)


# -- reading a user's file ---------------------------------------------------------------------------


def test_a_vocab_txt_is_one_token_per_line_counted_from_id_0(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_text("".join(token + "\n" for token in TOKENS), encoding="utf-8")  # "[PAD]" first: not JSON
    assert vocabulary_module.read(path) == TOKENS
    path.write_bytes("\r\n".join(TOKENS).encode())  # CRLF, no newline at the end
    assert vocabulary_module.read(path) == TOKENS
    path.write_text("a\u2028b\nc\n", encoding="utf-8")  # only "\n" ends a line
    assert vocabulary_module.read(path) == ("a\u2028b", "c")


def test_a_json_vocabulary_is_an_array_of_strings(tmp_path: Path) -> None:
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps([*TOKENS, "two\nlines"]), encoding="utf-8")
    assert vocabulary_module.read(path) == (*TOKENS, "two\nlines")


@pytest.mark.parametrize(
    ("name", "content", "complaint"),
    [
        ("vocab.txt", b"a\nb\n\xff\xfe\n", r"line 3: not valid UTF-8"),
        ("vocab.txt", b"a\n\nc\n", r"line 2 \(token id 1\): empty token"),
        ("vocab.txt", b"a\n" + b"x" * 257 + b"\n", r"line 2 \(token id 1\): 257 characters, more than the 256"),
        ("vocab.txt", b"", r"the vocabulary is empty"),
        ("vocab.json", b'["a",\n "b",\n ]', r"line 3: not JSON"),
        ("vocab.json", b'{"a": 0}', r"a JSON vocabulary is an array of strings, found dict"),
        ("vocab.json", b'["a", 1]', r"element 1 \(token id 1\): a token is a string, found int"),
        ("vocab.json", b'["a", "\\ud800"]', r"element 1 \(token id 1\): a lone surrogate"),
        ("vocab.json", b"[" * 100_000 + b"]" * 100_000, r"not (JSON|a JSON array)"),
    ],
)
def test_a_bad_vocabulary_file_is_refused_naming_the_line(
    tmp_path: Path, name: str, content: bytes, complaint: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"{name}: {complaint}"):
        vocabulary_module.read(path)


def test_a_vocabulary_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "vocab.txt"
    path.write_text("a\nb\nc\n", encoding="utf-8")
    monkeypatch.setattr(vocabulary_module, "MAX_TOKENS", 2)
    with pytest.raises(DataError, match="3 tokens, more than the 2"):
        vocabulary_module.read(path)
    monkeypatch.setattr(vocabulary_module, "MAX_VOCABULARY_BYTES", 4)
    with pytest.raises(DataError, match="more than the 4 bytes"):
        vocabulary_module.read(path)
    with pytest.raises(DataError, match="cannot read"):
        vocabulary_module.read(tmp_path / "missing.txt")


# -- in the bundle ------------------------------------------------------------------------------------


def test_the_vocabulary_round_trips_through_the_bundle(token_bundle: Path) -> None:
    document = json.loads((token_bundle / "manifest.json").read_text())
    assert document["vocabulary"] == {"file": "vocabulary.json", "size": len(TOKENS)}
    assert "vocabulary.json" in document["files"]
    assert json.loads((token_bundle / "vocabulary.json").read_text(encoding="utf-8")) == list(TOKENS)
    bundle = verify_bundle(token_bundle)
    bundle.close()
    assert bundle.vocabulary == TOKENS
    assert ("vocabulary", f"{len(TOKENS)} tokens (vocabulary.json)") in bundle.manifest.describe()


def test_a_bundle_without_a_vocabulary_leaves_the_key_out(tiny_bundle: Path) -> None:
    """Absent, not null: agents from before the field read the bundle, and its digest is unchanged."""
    assert "vocabulary" not in json.loads((tiny_bundle / "manifest.json").read_text())
    bundle = verify_bundle(tiny_bundle)
    bundle.close()
    assert bundle.vocabulary is None
    assert not any(heading == "vocabulary" for heading, _ in bundle.manifest.describe())


def copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def test_a_tampered_vocabulary_is_refused(token_bundle: Path, tmp_path: Path) -> None:
    root = copy(token_bundle, tmp_path)
    (root / "vocabulary.json").write_text(json.dumps(["[PAD]", "the", "dog", *TOKENS[3:]]), encoding="utf-8")
    with pytest.raises(BundleError, match=r"vocabulary\.json: sha256 mismatch"):
        verify_bundle(root)


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (json.dumps(list(TOKENS[:-1])).encode(), "9 tokens, the manifest says 10"),
        (b'["a", ', "not JSON"),
        (b"\xff", "not valid UTF-8"),
        (json.dumps(["", *TOKENS[1:]]).encode(), "empty token"),
    ],
)
def test_a_vocabulary_that_does_not_fit_the_manifest_is_refused(
    token_bundle: Path, tmp_path: Path, content: bytes, complaint: str
) -> None:
    root = copy(token_bundle, tmp_path)
    (root / "vocabulary.json").write_bytes(content)
    rehash(root, "vocabulary.json")  # the hashes agree: only the content is wrong
    with pytest.raises(BundleError, match=rf"vocabulary\.json: .*{complaint}"):
        verify_bundle(root)


def test_an_unlisted_vocabulary_is_refused(token_bundle: Path, tmp_path: Path) -> None:
    root = copy(token_bundle, tmp_path)
    rewrite_manifest(root, lambda m: m["files"].pop("vocabulary.json"))
    with pytest.raises(BundleError, match=r"vocabulary\.json: not listed"):
        verify_bundle(root)
    rewrite_manifest(root, lambda m: m["vocabulary"].__setitem__("file", "train_labels.npy"))
    with pytest.raises(BundleError, match=r"train_labels\.npy: named as the vocabulary and as another bundle file"):
        verify_bundle(root)


# -- only for token ids -------------------------------------------------------------------------------


def test_a_model_without_integer_inputs_takes_no_vocabulary(tiny_problem: TinyProblem, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no integer input"):
        fit_bundle(
            model=export_program(tiny_model(tiny_problem), (torch.zeros(2, 8),)),
            model_spec=ModelSpec(name="tiny", version="1", program=PROGRAM_FILE, num_classes=3),
            layers=TINY_LAYERS,
            train=tiny_problem.train,
            calibration=tiny_problem.calibration,
            out=tmp_path / "b",
            options=FitOptions(k=10, progress=False),
            vocabulary=TOKENS,
        )
    assert not (tmp_path / "b").exists()  # refused before anything was fitted


def test_the_manifest_refuses_a_vocabulary_for_a_float_model(tiny_bundle: Path) -> None:
    document = json.loads((tiny_bundle / "manifest.json").read_text())
    document["vocabulary"] = {"file": "vocabulary.json", "size": 10}
    with pytest.raises(ValueError, match="a vocabulary needs a model with an integer input"):
        Manifest.model_validate(document)


# -- extend carries it through -----------------------------------------------------------------------


def test_extend_keeps_the_vocabulary_as_it_is(token_bundle: Path, tmp_path: Path) -> None:
    ids = token_data(3, 9).x
    scores = DkNN.from_bundle(token_bundle).score(ids)
    lines = []
    for i in range(len(ids)):
        event = orjson.loads(inference_event(f"ev-{i}", ids[i], model_name="tokens", model_version="1", dtype="int64"))
        answer = int(scores.model_prediction[i])
        quarantine = {"event": event, "dknn": {"prediction": int(scores.prediction[i]), "model_prediction": answer}}
        lines.append(
            review_record(
                quarantine, verdict="model_wrong", label=(answer + 1) % 3, reviewer="ana", model_name="tokens",
                model_version="1", reviewed_at="2026-05-01T12:00:00Z",
            )
        )  # fmt: skip
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_bytes(b"".join(line + b"\n" for line in lines))
    base = verify_bundle(token_bundle)
    base.close()
    read = read_reviews(str(reviews), base.manifest)
    extend_bundle(base=token_bundle, reviews=read.engine_reviews(), calibration=token_data(100, 2), out=tmp_path / "b2")
    extended = verify_bundle(tmp_path / "b2")
    extended.close()
    assert extended.manifest.train.size == base.manifest.train.size + 3
    assert extended.vocabulary == TOKENS and extended.manifest.vocabulary == base.manifest.vocabulary
    assert (tmp_path / "b2" / "vocabulary.json").read_bytes() == (token_bundle / "vocabulary.json").read_bytes()
