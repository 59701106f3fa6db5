"""Where a data set named in a recipe is found: a local path, then the data mirror, then the Hugging Face hub.

Data sets are named as anywhere else: a hub id with its subset and split (`source: openai/gsm8k`, `subset: main`,
`split: test`) or a file path. A *data mirror* is a local folder of copies, looked up first when one is set
(`data.mirror=DIR`, else the environment variable RLVR_DATA_DIR), for machines that cannot reach the hub. Its layout:

    DIR/gsm8k/test.jsonl            the known sets below, by short name (KNOWN_SETS[...].file)
    DIR/openai/gsm8k/test.jsonl     any other hub set: a folder named like its hub id, holding files named by split
    DIR/knowrl/train.json           any relative path the recipe names (a set with no hub id is named by its file)

With neither a mirror copy nor the hub, `DataUnavailable` says which set, its hub id and how to point at a copy. This
module needs only the standard library (it is imported by rewards and by the config check).
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

MIRROR_ENV = "RLVR_DATA_DIR"


class DataUnavailable(FileNotFoundError):
    """A named data set that is neither a local file, nor in the data mirror, nor reachable on the hub."""


@dataclass(frozen=True)
class KnownSet:
    """A public data set with the column mapping it needs; `file` is its copy in a data mirror."""

    hub: str | None  # hub id (None: only distributed as a file, see `origin`)
    subset: str | None
    split: str  # the hub split
    file: str  # relative to the mirror
    prompt_template: str
    answer_column: str
    answer_after: str | None = None
    rename: dict[str, str] = field(default_factory=dict)  # hub column -> the mirror's (and the template's) name
    origin: str = ""  # where to get it, for sets with no hub id


KNOWN_SETS: dict[str, KnownSet] = {
    "gsm8k": KnownSet("openai/gsm8k", "main", "test", "gsm8k/test.jsonl", "{question}", "answer", "####"),
    "gsm8k_train": KnownSet("openai/gsm8k", "main", "train", "gsm8k/train.jsonl", "{question}", "answer", "####"),
    # the mirror's svamp/test.jsonl holds all 1,000 SVAMP problems; the hub's test split is 300 of them
    "svamp": KnownSet("ChilleD/SVAMP", None, "test", "svamp/test.jsonl", "{Body} {Question}", "Answer"),
    "math500": KnownSet("HuggingFaceH4/MATH-500", None, "test", "math500/test.jsonl", "{problem}", "answer"),
    "aime24": KnownSet("HuggingFaceH4/aime_2024", None, "train", "aime24/test.jsonl", "{problem}", "answer"),
    "amc23": KnownSet("math-ai/amc23", None, "test", "amc23/test.jsonl", "{problem}", "answer",
                      rename={"question": "problem"}),
    "knowrl": KnownSet(None, None, "train", "knowrl/train.json", "{question}", "answers",
                       origin="the KnowRL authors' release (a JSON list of {question, answers, title})"),
}


def known_set(source: str, subset: str | None = None, split: str | None = None) -> KnownSet | None:
    """The KNOWN_SETS entry for a hub id (and split), or for a mirror-relative file name; None if none matches."""
    for ks in KNOWN_SETS.values():
        if ks.hub is not None and ks.hub.lower() == source.lower() and (split is None or ks.split == split) \
                and (subset is None or ks.subset is None or ks.subset == subset):
            return ks
        if ks.file == source.lstrip("./"):
            return ks
    return None


def mirror_dir(configured: str | None = None) -> Path | None:
    """The data mirror: `data.mirror` when set, else $RLVR_DATA_DIR; None when neither is (an empty value is unset)."""
    value = configured or os.environ.get(MIRROR_ENV) or None
    return Path(value).expanduser() if value else None


def find_in_mirror(source: str, split: str, subset: str | None, mirror: Path | None) -> Path | None:
    """The mirror's copy of a data set (a file, or a folder of split files), or None."""
    if mirror is None or Path(source).is_absolute():
        return None
    ks = known_set(source, subset, split)
    candidates = ([mirror / ks.file] if ks is not None else []) + [mirror / source]
    return next((c for c in candidates if c.exists()), None)


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether the hub answers at all (a 3 s connection check), so an offline machine fails in a second, not after
    half a minute of retries. HF_HUB_OFFLINE / HF_DATASETS_OFFLINE = 1 mean no."""
    if any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
    except OSError:
        return False
    return True


def unavailable_message(source: str, split: str, subset: str | None, mirror: Path | None, why: str) -> str:
    """What to say when a named data set cannot be found: the set, its hub id, and how to point at a local copy."""
    ks = known_set(source, subset, split)
    rel = ks.file if ks is not None else (source if Path(source).suffix else f"{source}/{split}.jsonl")
    if mirror is None:
        where = f"no data mirror is set (data.mirror or {MIRROR_ENV})"
    else:
        where = f"the data mirror {mirror} has no {rel}"
    get = (f"it is {ks.origin}: download it" if ks is not None and ks.hub is None else
           f"download it where the hub is reachable (datasets.load_dataset({source!r}"
           f"{', ' + repr(subset) if subset else ''}) fills the local cache), or download the file")
    what = (f"data file {source!r}" if Path(source).suffix else
            f"data set {source!r} (split {split!r}{', subset ' + repr(subset) if subset else ''})")
    return (f"{what} is not a local file, "
            f"{where}, and {why}; {get} and set source to its path, or put it at DIR/{rel} and set data.mirror=DIR "
            f"(or {MIRROR_ENV}=DIR)")


def resolve_data_file(path: str, key: str, mirror: str | None = None) -> str:
    """A data file named in a config (e.g. knowledge.qa_data): as given when it exists or is absolute, else the
    mirror's copy; a relative path found nowhere is DataUnavailable naming `key`."""
    if Path(path).expanduser().exists() or Path(path).expanduser().is_absolute():
        return path  # an absolute path is the user's own file: its reader says what is wrong with it
    found = find_in_mirror(path, "train", None, mirror_dir(mirror))
    if found is not None:
        return str(found)
    raise DataUnavailable(f"{key}: " + unavailable_message(path, "train", None, mirror_dir(mirror),
                                                         f"{Path(path).absolute()} does not exist"))
