"""rl/files.py: atomic writes of a file and of a folder; a failure part-way leaves the old content and no temporary."""

from __future__ import annotations

import json
import os
import stat

import pytest

from rl import files
from rl.files import replace_folder_atomic, write_atomic, write_jsonl


def test_write_and_overwrite(tmp_path):
    path = tmp_path / "state.json"
    write_atomic(path, "first")
    assert path.read_text() == "first"
    write_atomic(path, "zweite \u00fcberschrift")  # str: UTF-8
    assert path.read_bytes() == "zweite \u00fcberschrift".encode("utf-8")
    write_atomic(path, b"\x00\xffbytes")
    assert path.read_bytes() == b"\x00\xffbytes"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left behind


def test_file_mode_is_a_plain_writes(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("x")
    write_atomic(tmp_path / "atomic", "x")
    assert stat.S_IMODE((tmp_path / "atomic").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


@pytest.mark.parametrize("fail", ["replace", "fsync"])
def test_failure_mid_write_keeps_the_old_file(tmp_path, monkeypatch, fail):
    path = tmp_path / "latest"
    write_atomic(path, "step_000001")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, fail, boom)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, "step_000002")
    monkeypatch.undo()
    assert path.read_text() == "step_000001"
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]


def test_write_jsonl_bytes_and_folder(tmp_path):
    rows = [{"prompt": "caf\u00e9", "x": 1.5}, {"prompt": "b", "list": [1, 2]}]
    path = tmp_path / "sub" / "rows.jsonl"
    write_jsonl(path, rows)
    assert path.read_bytes() == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    write_jsonl(path, iter([]))  # a generator; nothing: an empty file
    assert path.read_bytes() == b""


def test_replace_folder(tmp_path):
    final = tmp_path / "step_000001"
    for content in ("old", "new"):
        tmp = tmp_path / ".tmp-step_000001"
        (tmp / "model").mkdir(parents=True)
        (tmp / "model" / "w.bin").write_text(content)
        (tmp / "state.json").write_text(content)
        replace_folder_atomic(tmp, final)
        assert not tmp.exists()
        assert (final / "model" / "w.bin").read_text() == content and (final / "state.json").read_text() == content
    assert sorted(p.name for p in final.rglob("*")) == ["model", "state.json", "w.bin"]  # nothing of "old" mixed in


def test_replace_folder_without_overwrite_keeps_the_other_writers(tmp_path):
    final = tmp_path / "index"
    final.mkdir()
    (final / "theirs").write_text("1")
    tmp = tmp_path / ".index.tmp-x"
    tmp.mkdir()
    (tmp / "mine").write_text("2")
    with pytest.raises(OSError):
        replace_folder_atomic(tmp, final, overwrite=False)
    assert [p.name for p in final.iterdir()] == ["theirs"] and (tmp / "mine").exists()


def test_replace_folder_failure_keeps_the_old_folder(tmp_path, monkeypatch):
    final = tmp_path / "model"
    final.mkdir()
    (final / "config.json").write_text("old")
    tmp = tmp_path / ".tmp-model"
    tmp.mkdir()
    (tmp / "config.json").write_text("new")

    def boom(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(files.os, "fsync", boom)  # fails before anything is renamed or removed
    with pytest.raises(OSError):
        replace_folder_atomic(tmp, final)
    monkeypatch.undo()
    assert (final / "config.json").read_text() == "old"
    assert os.path.isdir(tmp)  # the caller removes its temporary folder (it knows whether to keep it)
