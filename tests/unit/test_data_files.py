"""Data files (agent.engine.data_files): stored arrays are memory-mapped, not read whole; nothing is
ever unpickled; every inconsistency is a DataError that names the file and what is wrong."""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.engine.data_files import Dataset, load_dataset
from agent.errors import DataError


class Exploit:
    """Unpickling it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.normal(size=(6, 3, 2)).astype(np.float32),
        "y": np.arange(6, dtype=np.int32) % 3,
    }


def test_stored_npz_members_are_memory_mapped_with_their_values(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    path = tmp_path / "train.npz"
    np.savez(path, x=arrays["x"], y=arrays["y"])
    data = load_dataset(str(path), labelled=True)
    assert isinstance(data.x, np.memmap)  # not read whole
    assert data.x.dtype == np.float32 and data.x.shape == (6, 3, 2)
    np.testing.assert_array_equal(data.x, arrays["x"])
    np.testing.assert_array_equal(data.y, arrays["y"])
    assert data.y is not None and data.y.dtype == np.int64
    assert data.source == str(path) and len(data) == 6


def test_named_npz_inputs_are_each_memory_mapped(tmp_path: Path) -> None:
    ids = np.arange(12, dtype=np.int64).reshape(4, 3)
    mask = np.asfortranarray(np.eye(4, 3, dtype=np.float16))  # column-major: mapped as such
    path = tmp_path / "two.npz"
    np.savez(path, input_ids=ids, attention_mask=mask, y=np.zeros(4, dtype=np.int64))
    data = load_dataset(str(path), labelled=False)
    assert isinstance(data.x, dict) and set(data.x) == {"input_ids", "attention_mask"}
    assert all(isinstance(array, np.memmap) for array in data.x.values())
    np.testing.assert_array_equal(data.x["input_ids"], ids)
    np.testing.assert_array_equal(data.x["attention_mask"], mask)
    assert data.y is not None  # labels are kept when present, even if not required


def test_compressed_npz_members_are_read_whole(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    path = tmp_path / "train.npz"
    np.savez_compressed(path, x=arrays["x"], y=arrays["y"])
    data = load_dataset(str(path), labelled=True)
    assert isinstance(data.x, np.ndarray) and not isinstance(data.x, np.memmap)
    np.testing.assert_array_equal(data.x, arrays["x"])


def test_npy_files_named_on_the_command_line_are_memory_mapped(tmp_path: Path) -> None:
    ids, mask, labels = np.arange(10).reshape(5, 2), np.ones((5, 2), np.float32), np.arange(5) % 2
    named: dict[str, np.ndarray] = {"ids": ids, "mask": mask, "labels": labels}
    for name, array in named.items():
        np.save(tmp_path / f"{name}.npy", array)
    text = f"input_ids={tmp_path / 'ids.npy'}, attention_mask={tmp_path / 'mask.npy'},y={tmp_path / 'labels.npy'},"
    data = load_dataset(text, labelled=True)
    assert isinstance(data.x, dict) and list(data.x) == ["input_ids", "attention_mask"]
    assert all(isinstance(array, np.memmap) for array in data.x.values())
    np.testing.assert_array_equal(data.x["input_ids"], ids)
    np.testing.assert_array_equal(data.y, labels)


def test_one_npy_file_is_the_only_input(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((3, 4), np.float32))
    data = load_dataset(str(tmp_path / "x.npy"), labelled=False)
    assert isinstance(data.x, np.memmap) and data.y is None
    assert data.inputs.keys() == {"input"}


def test_a_single_named_input_called_x_is_a_bare_array(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((3, 4), np.float32))
    data = load_dataset(f"x={tmp_path / 'a.npy'}", labelled=False)
    assert isinstance(data.x, np.ndarray)


def test_labels_are_required_when_asked_for(tmp_path: Path) -> None:
    np.savez(tmp_path / "unlabelled.npz", x=np.ones((3, 2)))
    assert load_dataset(str(tmp_path / "unlabelled.npz"), labelled=False).y is None
    with pytest.raises(DataError, match=r"unlabelled\.npz: needs a 'y' array of labels beside the inputs, has \['x'\]"):
        load_dataset(str(tmp_path / "unlabelled.npz"), labelled=True)
    np.save(tmp_path / "x.npy", np.ones((3, 2)))
    with pytest.raises(DataError, match=r"needs a 'y' array"):
        load_dataset(str(tmp_path / "x.npy"), labelled=True)


@pytest.mark.parametrize(
    ("labels", "shown"),
    [
        (np.zeros((4, 1), np.int64), r"int64\[4, 1\]"),
        (np.zeros(4, np.float32), r"float32\[4\]"),
        (np.array(3), r"int64\[\]"),
    ],
)
def test_labels_must_be_one_integer_per_row(tmp_path: Path, labels: np.ndarray, shown: str) -> None:
    np.savez(tmp_path / "d.npz", x=np.ones((4, 2)), y=labels)
    with pytest.raises(DataError, match=rf"'y' must be a 1-d integer array, got {shown}"):
        load_dataset(str(tmp_path / "d.npz"), labelled=True)


def test_arrays_must_have_the_same_number_of_rows(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", a=np.ones((4, 2)), b=np.ones((5, 2)), y=np.zeros(4, np.int64))
    with pytest.raises(DataError, match=r"the arrays must have the same number of rows .*'a': 4, 'b': 5, 'y': 4"):
        load_dataset(str(tmp_path / "d.npz"), labelled=True)
    np.savez(tmp_path / "e.npz", x=np.ones((4, 2)), y=np.zeros(3, np.int64))
    with pytest.raises(DataError, match=r"same number of rows .*'x': 4, 'y': 3"):
        load_dataset(str(tmp_path / "e.npz"), labelled=False)


@pytest.mark.parametrize("x", [np.ones((0, 2)), np.array(1.0)])
def test_an_input_needs_at_least_one_row(tmp_path: Path, x: np.ndarray) -> None:
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError, match=r"same number of rows \(at least one\)"):
        load_dataset(str(tmp_path / "x.npy"), labelled=False)


def test_an_archive_of_labels_only_has_no_input(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", y=np.zeros(3, np.int64))
    with pytest.raises(DataError, match=r"holds no input array"):
        load_dataset(str(tmp_path / "d.npz"), labelled=True)


def object_array(marker: Path) -> np.ndarray:
    array = np.empty(2, dtype=object)
    array[:] = [Exploit(marker), Exploit(marker)]
    return array


@pytest.mark.parametrize("form", ["npy", "npz", "npz_compressed", "named"])
def test_object_arrays_are_refused_and_never_unpickled(tmp_path: Path, form: str) -> None:
    marker = tmp_path / "pwned"
    objects = object_array(marker)
    if form == "npy":
        np.save(tmp_path / "x.npy", objects, allow_pickle=True)
        text, cause = str(tmp_path / "x.npy"), r"x\.npy: not a readable \.npy array"
    elif form == "named":
        np.save(tmp_path / "x.npy", objects, allow_pickle=True)
        text, cause = f"ids={tmp_path / 'x.npy'}", r"x\.npy: not a readable \.npy array"
    else:
        save = np.savez if form == "npz" else np.savez_compressed
        save(tmp_path / "d.npz", x=objects)
        text, cause = str(tmp_path / "d.npz"), r"d\.npz: not a readable \.npz archive"
    with pytest.raises(DataError, match=cause):
        load_dataset(text, labelled=False)
    assert not marker.exists()


@pytest.mark.parametrize("text", ["missing.npy", "missing.npz", "x=missing.npy"])
def test_a_missing_file_is_named(tmp_path: Path, text: str) -> None:
    with pytest.raises(DataError, match=r"missing\.np[yz]: no such file"):
        load_dataset(str(tmp_path / text) if "=" not in text else f"x={tmp_path / 'missing.npy'}", labelled=False)


@pytest.mark.parametrize(("name", "content"), [("bad.npz", b"not a zip"), ("bad.npy", b"\x93NUMPY garbage")])
def test_a_file_that_is_not_an_array_file_is_a_data_error(tmp_path: Path, name: str, content: bytes) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=f"{re.escape(name)}: not a readable"):
        load_dataset(str(tmp_path / name), labelled=False)


def test_a_stored_member_without_its_local_header_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((3, 2)))
    with zipfile.ZipFile(path) as archive:
        offset = archive.getinfo("x.npy").header_offset
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 4] = b"XXXX"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"d\.npz: not a readable \.npz archive"):
        load_dataset(str(path), labelled=False)


@pytest.mark.parametrize(
    ("item", "cause"),
    [
        ("x=", r"'x=': name each file as NAME=FILE\.npy"),
        ("=a.npy", r"'=a\.npy': name each file as NAME=FILE\.npy"),
        ("x=a.npy,x=a.npy", r"'x' is named twice"),
    ],
)
def test_a_bad_name_file_item_is_a_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, item: str, cause: str
) -> None:
    monkeypatch.chdir(tmp_path)
    np.save("a.npy", np.ones((3, 2)))
    with pytest.raises(DataError, match=cause):
        load_dataset(item, labelled=False)


def test_a_single_array_is_the_model_s_single_input_whatever_its_name() -> None:
    array = np.ones((3, 2))
    for x in (array, {"pixels": array}):
        data = Dataset(x, source="d.npz")
        assert data.arrays_for(["input_ids"])[0] is array
        assert data.arrays_for(["x"])[0] is array


def test_named_inputs_are_given_in_the_model_s_order() -> None:
    ids, mask = np.ones((3, 2)), np.zeros((3, 2))
    data = Dataset({"attention_mask": mask, "input_ids": ids}, source="d.npz")
    got = data.arrays_for(["input_ids", "attention_mask"])
    assert got[0] is ids and got[1] is mask


def test_an_input_the_data_lacks_is_refused_by_name() -> None:
    data = Dataset({"input_ids": np.ones((3, 2)), "extra": np.ones((3, 1))}, source="d.npz")
    with pytest.raises(
        DataError, match=r"d\.npz has no input\(s\) \['attention_mask'\]; it has \['extra', 'input_ids'\]"
    ):
        data.arrays_for(["input_ids", "attention_mask"])
    with pytest.raises(DataError, match=r"has no input\(s\) \['attention_mask'\]"):
        data.arrays_for(["attention_mask"])
    single = Dataset(np.ones((3, 2)))
    with pytest.raises(DataError, match=r"the data has no input\(s\) \['a', 'b'\]; it has \['input'\]"):
        single.arrays_for(["a", "b"])
