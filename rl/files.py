"""Atomic writes, the one way rlvr puts a file or a folder on disk: a crash (or a full disk) at any moment leaves the
old content or the new under the final name, never half of it.

- `write_atomic(path, data)`: a file (text as UTF-8, or bytes), written to a temporary file in the same folder,
  fsynced, renamed over `path`, and the folder fsynced so the rename itself survives a power cut;
- `write_jsonl(path, rows)`: the same for a JSON Lines file of dicts (one `json.dumps(row, ensure_ascii=False)` a line),
  creating its folder;
- `replace_folder_atomic(tmp_dir, final_dir)`: a folder written in full under a temporary name (a checkpoint, a model,
  a data or cache folder), fsynced file by file, then renamed into place.

Standard library only: every layer (rl.core excepted, which writes nothing) may import it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path


def fsync_folder(folder: Path) -> None:
    """fsync a folder's entry list (after a rename into it, or a file created in it)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file below `folder`, then `folder` itself."""
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_folder(folder)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `data` (str: UTF-8) to `path` so that a crash leaves the old content or the new, never half of it.
    The folder must exist. On any failure the temporary file is removed and the old file is untouched."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")  # unique: concurrent writers
    try:
        with open(tmp, "xb") as f:  # the file mode open() gives (0o666 less the umask), as a plain write would
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """JSON Lines (UTF-8, non-ASCII kept as it is), written atomically; creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def replace_folder_atomic(tmp_dir: str | Path, final_dir: str | Path, *, overwrite: bool = True) -> None:
    """Make the fully written folder `tmp_dir` (next to `final_dir`, on the same disk) visible as `final_dir`: fsync
    its files, remove an existing `final_dir` (with `overwrite`; without, the rename fails with OSError on a
    non-empty `final_dir`, e.g. a cache folder another process finished first), rename, fsync the parent folder."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    fsync_tree(tmp_dir)
    if overwrite and final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
    fsync_folder(final_dir.parent)
