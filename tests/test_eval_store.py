"""The JSONL results store: durable appends, resume, torn last lines, no duplicates."""

import json

import pytest

from mechedit.store import ResultStore, StoreError


def test_append_reopen_and_dataframe(tmp_path):
    path = tmp_path / "out" / "records.jsonl"
    store = ResultStore(path)
    store.append("a", {"ES": 1.0, "probs": [0.1, 0.2]})
    store.append("b", {"ES": 0.0, "probs": [0.3]})
    again = ResultStore(path)
    assert again.keys() == ["a", "b"] and "a" in again and "c" not in again and len(again) == 2
    assert again.get("a") == {"key": "a", "ES": 1.0, "probs": [0.1, 0.2]}
    df = again.to_dataframe()
    assert list(df["key"]) == ["a", "b"] and list(df["ES"]) == [1.0, 0.0]
    assert path.read_text().count("\n") == 2


def test_a_key_is_never_stored_twice(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    store.append("a", {"x": 1})
    with pytest.raises(StoreError, match="already"):
        store.append("a", {"x": 2})
    with pytest.raises(StoreError, match="already"):
        ResultStore(tmp_path / "r.jsonl").append("a", {"x": 3})
    with pytest.raises(StoreError, match="key"):
        store.append("b", {"key": "b"})
    assert len(ResultStore(tmp_path / "r.jsonl")) == 1


@pytest.mark.parametrize("torn", ['{"key": "c", "ES": 0.', '{"key": "c"', "{"])
def test_a_torn_last_line_is_detected_dropped_and_redone(tmp_path, torn, caplog):
    path = tmp_path / "r.jsonl"
    store = ResultStore(path)
    store.append("a", {"x": 1})
    store.append("b", {"x": 2})
    good = path.read_bytes()
    with open(path, "a") as f:  # what a kill in the middle of a write leaves
        f.write(torn)
    reopened = ResultStore(path)
    assert reopened.torn_line_dropped and reopened.keys() == ["a", "b"]
    assert "interrupted write" in caplog.text
    assert path.read_bytes() == good  # cut off, so the next append starts on a clean line
    reopened.append("c", {"x": 3})
    final = ResultStore(path)
    assert final.keys() == ["a", "b", "c"] and not final.torn_line_dropped


def test_corruption_before_the_last_line_raises(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(StoreError, match="line 2"):
        ResultStore(path)
    path.write_text('{"key": "a"}\n{"key": "a"}\n')
    with pytest.raises(StoreError, match="twice"):
        ResultStore(path)


def test_in_memory_store_writes_nothing(tmp_path):
    store = ResultStore(None)
    store.append("a", {"x": 1})
    assert store.keys() == ["a"] and store.path is None
    assert list(tmp_path.iterdir()) == []


def test_rows_are_plain_json(tmp_path):
    import numpy as np

    store = ResultStore(tmp_path / "r.jsonl")
    row = store.append("a", {"v": np.float64(0.5), "arr": np.arange(3), "nan": float("nan")})
    line = json.loads((tmp_path / "r.jsonl").read_text())
    assert line["arr"] == [0, 1, 2] and row["v"] == 0.5
