"""Data: generated arithmetic word problems, any local or hub data set in one shape, chat prompts, a resumable sampler.

Every data set becomes rows with a "prompt" (the user text) and an "answer" (the gold answer as a string), plus its
own columns, which reward functions receive as keyword arguments.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import math
import os
import random
import re
import string
from pathlib import Path

import datasets
import numpy as np

from rl.config.data import ArithmeticConfig, DataConfig, DatasetConfig
from rl.data.sources import (DataUnavailable, KNOWN_SETS, find_in_mirror, hub_reachable, known_set, mirror_dir,
                             unavailable_message)
from rl.files import write_jsonl
from rl.models.chat import render_prompts

# -- generated arithmetic word problems (the quickstart needs no download) ----------------------------------------


_NAMES = {"Sam": "he", "Mia": "she", "Tom": "he", "Ava": "she", "Leo": "he", "Zoe": "she", "Max": "he", "Ivy": "she",
          "Ben": "he", "Lily": "she", "Omar": "he", "Nina": "she", "Raj": "he", "Emma": "she", "Carlos": "he",
          "Aisha": "she"}
_OBJECTS = {"apples": "apple", "books": "book", "marbles": "marble", "stickers": "sticker", "pencils": "pencil",
            "cookies": "cookie", "coins": "coin", "cards": "card", "shells": "shell", "toy cars": "toy car",
            "balloons": "balloon", "stamps": "stamp"}
_START = ["{name} has {a} {obj}.", "{name} starts with {a} {obj}.", "{name} has a box with {a} {obj} in it."]
# Every "+" step says "more", every "*" step says "times", no "-" step says either (tests re-derive answers this way).
_STEPS = {
    "+": ["{pron} buys {b} more.", "{pron} finds {b} more.", "{pron} gets {b} more from a friend.",
          "a friend gives {obj_pron} {b} more."],
    "-": ["{pron} gives away {b}.", "{pron} loses {b}.", "{pron} gives {b} to a friend.", "{pron} sells {b}."],
    "*": ["the number of {obj} {pron} has becomes {b} times as large.",
          "{pron} trades them for {b} times as many."],
}
_QUESTION = ["How many {obj} does {name} have now?", "How many {obj} does {name} have in the end?"]
_TEST_SPLITS = ("test", "eval", "validation")


def _capitalize(s: str) -> str:
    return s[:1].upper() + s[1:]


def _problem(rng: random.Random, cfg: ArithmeticConfig) -> dict | None:
    """One problem, or None when the drawn chain cannot stay positive (only "-" left and nothing to take away)."""
    name, obj = rng.choice(list(_NAMES)), rng.choice(list(_OBJECTS))
    pron = _NAMES[name]
    value = rng.randint(1, cfg.max_value)
    text = [rng.choice(_START).format(name=name, a=value, obj=_OBJECTS[obj] if value == 1 else obj)]
    num_ops = rng.randint(cfg.min_ops, cfg.max_ops)
    for i in range(num_ops):
        op = rng.choice(cfg.operations)
        if op == "-" and value < 2:  # keep every count >= 1: take away something only when something would remain
            others = [o for o in cfg.operations if o != "-"]
            if not others:
                return None
            op = rng.choice(others)
        if op == "+":
            b = rng.randint(1, cfg.max_value)
            value += b
        elif op == "-":
            b = rng.randint(1, min(value - 1, cfg.max_value))
            value -= b
        else:
            b = rng.randint(2, cfg.max_value)
            value *= b
        step = rng.choice(_STEPS[op]).format(pron=pron, b=b, obj=obj, obj_pron="him" if pron == "he" else "her")
        text.append(("Then " + step) if i > 0 else _capitalize(step))
    text.append(rng.choice(_QUESTION).format(obj=obj, name=name))
    return {"question": " ".join(text), "answer": str(value), "num_ops": num_ops}


def _generate(rng: random.Random, cfg: ArithmeticConfig, n: int, exclude: set[str], split: str) -> list[dict]:
    out: list[dict] = []
    seen = set(exclude)
    misses = 0
    while len(out) < n:
        if misses > 20_000:  # that many draws in a row gave nothing new: the space of problems is (nearly) used up
            raise ValueError(
                f"data.arithmetic: only {len(out)} of {n} distinct {split} problems could be made with "
                f"min_ops={cfg.min_ops}, max_ops={cfg.max_ops}, max_value={cfg.max_value}, "
                f"operations={cfg.operations}; raise max_value or max_ops, or ask for fewer (num_train/num_eval)"
            )
        p = _problem(rng, cfg)
        if p is not None and p["question"] not in seen:
            seen.add(p["question"])
            out.append(p)
            misses = 0
        else:
            misses += 1
    return out


def arithmetic_problems(cfg: ArithmeticConfig, split: str) -> list[dict]:
    """Seeded word problems {"question", "answer" (an integer >= 1, as a string), "num_ops"}.

    Train and test come from different seeds derived from cfg.seed, and no test question equals a train question.
    """
    bad = [op for op in cfg.operations if op not in _STEPS]
    if bad or not cfg.operations:
        raise ValueError(f"data.arithmetic.operations: {cfg.operations!r}; use a non-empty subset of {list(_STEPS)}")
    if not 1 <= cfg.min_ops <= cfg.max_ops:
        raise ValueError(f"data.arithmetic: need 1 <= min_ops <= max_ops (got {cfg.min_ops}, {cfg.max_ops})")
    if cfg.max_value < 2:
        raise ValueError(f"data.arithmetic.max_value must be >= 2 (got {cfg.max_value})")
    if cfg.num_train < 0 or cfg.num_eval < 0:
        raise ValueError("data.arithmetic: num_train and num_eval must be >= 0")
    if split != "train" and split not in _TEST_SPLITS:
        raise ValueError(f"data: the arithmetic source has splits 'train' and 'test', not {split!r}")
    train = _generate(random.Random(f"arithmetic:{cfg.seed}:train"), cfg, cfg.num_train, set(), "train")
    if split == "train":
        return train
    return _generate(random.Random(f"arithmetic:{cfg.seed}:test"), cfg, cfg.num_eval,
                     {p["question"] for p in train}, "test")


# -- any data set into rows of (prompt, answer, ...) --------------------------------------------------------------


def preset(name: str) -> DatasetConfig:
    """The DatasetConfig of a known public set by short name (rl/data/sources.py KNOWN_SETS): its hub id, subset,
    split and column mapping; knowrl's is its file, with the held-out tail (rows 2977-) that no recipe trains on."""
    ks = KNOWN_SETS[name]
    return DatasetConfig(source=ks.hub or ks.file, split=ks.split, subset=ks.subset, prompt_template=ks.prompt_template,
                         answer_column=ks.answer_column, answer_after=ks.answer_after,
                         **({"offset": 2977, "grader": "short_answer"} if name == "knowrl" else {}))


_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return f"{type(e).__name__}: {e}"


def _split_files(folder: Path, split: str, source: str) -> list[Path]:
    """Data files in a folder (and its data/ subfolder); the ones named after `split` when files are named by split."""
    files = sorted(p for d in (folder, folder / "data") if d.is_dir() for p in d.iterdir()
                   if p.is_file() and p.suffix in _FORMATS)
    if not files:
        raise ValueError(f"data source {source!r}: the folder has no {'/'.join(_FORMATS)} file; "
                         "point source at a data file or a folder of them")

    def split_of(p: Path) -> str:
        return p.stem.split("-")[0].split(".")[0]

    named = {split_of(p) for p in files} & {"train", "test", "validation", "valid", "dev", "eval"}
    if named:
        files = [p for p in files if split_of(p) == split]
        if not files:
            raise ValueError(f"data source {source!r}: the folder has split(s) {sorted(named)}, not {split!r}; "
                             "set split to one of them")
    formats = {_FORMATS[p.suffix] for p in files}
    if len(formats) > 1:
        raise ValueError(f"data source {source!r}: the folder mixes formats {sorted(formats)}; keep one kind of file")
    return files


class _BadValue(ValueError):
    """A JSON value that parses but that the loader would misread (raised from the decoder's hooks)."""


def _object(pairs: list) -> dict:
    row = dict(pairs)
    if len(row) < len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _BadValue(f"the key {dup!r} appears twice in one object; keep one")
    return row


def _finite(text: str) -> float:
    if math.isinf(value := float(text)):
        raise _BadValue(f"the number {text} is out of range for a float; write it as a string")
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_float=_finite)
_WS = re.compile(r"[ \t\n\r]*")
_INT64 = 2**63


def _json_rows(text: str):
    """(where, row) of each row of a JSON list of rows or of JSON Lines, read the way datasets reads them: one list
    when the text starts with "[", else one value per line. Raises JSONDecodeError or _BadValue (with .where)."""
    if not text.startswith("["):
        offset = 0
        for n, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit inside a string
            if line.strip():
                try:
                    yield f"line {n}", _DECODER.decode(line)
                except json.JSONDecodeError as e:
                    raise json.JSONDecodeError(e.msg, text, offset + e.pos) from None  # a line of the whole file
                except _BadValue as e:
                    e.where = f"line {n}"
                    raise
            offset += len(line) + 1
        return
    pos, i = _WS.match(text, 1).end(), 0
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            where = f"row {i} of the list (counting from 0, line {text.count(chr(10), 0, pos) + 1})"
            try:
                row, pos = _DECODER.raw_decode(text, pos)
            except _BadValue as e:
                e.where = where
                raise
            yield where, row
            i += 1
            pos = _WS.match(text, pos).end()
            if text.startswith("]", pos):
                pos += 1
                break
            if not text.startswith(",", pos):
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
            pos = _WS.match(text, pos + 1).end()
    if _WS.match(text, pos).end() != len(text):
        raise json.JSONDecodeError("Extra data", text, _WS.match(text, pos).end())


def _find_bad_json(path: Path, answer_column: str | None = None) -> str | None:
    """Where a JSON / JSON Lines file holds something that is not a row, as 'line N: reason', or None if all is well.

    Checked before datasets reads the file: pyarrow crashes the process on a JSON Lines file whose first row is null,
    and reads rows that are not objects as a "text" column or as rows of nulls."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # datasets skips a leading byte order mark too
    except UnicodeDecodeError as e:
        return f"it is not UTF-8 text ({e}); save it as UTF-8"
    shape = "write one JSON object per line, or one JSON list of objects"
    try:
        for where, row in _json_rows(text):
            if not isinstance(row, dict):
                return (f"{where}: a row must be a JSON object, got {json.dumps(row, ensure_ascii=False)[:40]} "
                        f"({type(row).__name__}); {shape}")
            value = row.get(answer_column)
            if type(value) is int and not -_INT64 <= value < _INT64:
                return (f"{where}: the answer {value} does not fit in 64 bits and would be read as an inexact "
                        "float; write it as a string")
    except json.JSONDecodeError as e:
        snippet = e.doc.split("\n")[e.lineno - 1].strip()[:80] if e.doc else ""
        return f"line {e.lineno} column {e.colno}: {e.msg} in {snippet!r}; fix that line ({shape})"
    except _BadValue as e:
        return f"{e.where}: {e}"
    except RecursionError:
        return f"it nests JSON lists or objects too deeply to read; {shape}"
    return None


def _find_bad_csv(path: Path) -> str | None:
    """Where a CSV file has a row with more fields than its header (pandas would silently turn the extra leading
    fields into an index and shift every value), as 'line N: reason', or None."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        return f"it is not UTF-8 text ({e}); save it as UTF-8"
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next((r for r in reader if r), None)
        for r in reader:
            if header is not None and len(r) > len(header):
                return (f"line {reader.line_num}: {len(r)} fields, but the header has {len(header)}; "
                        'quote a field that holds a comma ("a, b")')
    except csv.Error:  # what the csv module cannot read, pandas judges below
        return None
    return None


def _is_json_list(path: Path) -> bool:
    """Whether datasets reads the file as one JSON list: it starts with "[" (after a byte order mark)."""
    with path.open("rb") as f:
        return f.read(4).removeprefix(codecs.BOM_UTF8)[:1] == b"["


def _as_json_lines(path: Path) -> Path:
    """A JSON list of rows as JSON Lines, written once into the datasets cache. (datasets turns a list into lines with
    pandas' ujson, which keeps 10 significant digits of a float: 3.14159265358979 would load as 3.1415926536.)"""
    data = path.read_bytes()
    name = f"{hashlib.sha256(data).hexdigest()[:32]}.jsonl"  # the same content, the same file: datasets' cache works
    target = Path(datasets.config.HF_DATASETS_CACHE) / "rlvr-json-lines" / name
    if not target.exists():
        write_jsonl(target, json.loads(data.decode("utf-8-sig")))  # atomic: never a half-written file under the name
    return target


def _parquet_is_empty(path: Path) -> bool:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception:  # noqa: BLE001 -- not Parquet at all: datasets says why below
        return False
    return meta.num_rows == 0 or meta.num_columns == 0


def _load_local(path: Path, ds: DatasetConfig) -> datasets.Dataset:
    if path.is_dir():
        files = _split_files(path, ds.split, ds.source)
    else:
        if path.suffix not in _FORMATS:
            raise ValueError(f"data source {ds.source!r}: unknown extension {path.suffix!r}; "
                             f"use one of {list(_FORMATS)}")
        files = [path]
    fmt = _FORMATS[files[0].suffix]
    for f in files:
        if f.stat().st_size == 0 or (f.stat().st_size < 64 and f.suffix != ".parquet" and not f.read_bytes().strip()):
            raise ValueError(f"data source {ds.source!r}: {f} is empty; give a file with rows")
        # say which file, which line and why, before datasets parses it (its errors name neither; some inputs crash it)
        if fmt == "json" and (bad := _find_bad_json(f, ds.answer_column)):
            raise ValueError(f"data source {ds.source!r}: malformed JSON in {f}, {bad}")
        if fmt == "csv" and (bad := _find_bad_csv(f)):
            raise ValueError(f"data source {ds.source!r}: malformed CSV in {f}, {bad}")
        if fmt == "parquet" and _parquet_is_empty(f):  # datasets says "BatchSize must be greater than 0" then
            raise ValueError(f"data source {ds.source!r}: {f} has no rows (or its rows have no fields); give a file "
                             "with rows")
    if fmt == "json":
        files = [_as_json_lines(f) if _is_json_list(f) else f for f in files]
    try:
        raw = datasets.load_dataset(fmt, data_files=[str(f) for f in files], split="train")
    except Exception as e:  # datasets wraps parse errors deeply: say which file and why
        cause = _root_cause(e)
        if "corresponds to no data" in cause:
            raise ValueError(f"data source {ds.source!r} has no rows (or its rows have no fields); give a file with "
                             "rows") from e
        raise ValueError(f"data source {ds.source!r} could not be read as {fmt}: {cause}; fix the file (its "
                         f"extension, {files[0].suffix}, says it is {fmt})") from e
    if len(raw) == 0:
        raise ValueError(f"data source {ds.source!r} has no rows; give a file with rows")
    try:  # a parquet file can hold text that is not UTF-8: datasets would only fail later, on the row that has it
        raw.data.validate(full=True)
    except Exception as e:
        raise ValueError(f"data source {ds.source!r}: invalid values in {files[0] if len(files) == 1 else files} "
                         f"({_root_cause(e)}; columns, counting from 0: {raw.column_names}); rewrite the file with "
                         "UTF-8 text") from e
    return raw


def _load_raw(ds: DatasetConfig, data: DataConfig) -> datasets.Dataset:
    if ds.source == "arithmetic":
        problems = arithmetic_problems(data.arithmetic, ds.split)
        return datasets.Dataset.from_dict({k: [p[k] for p in problems] for k in ("question", "answer", "num_ops")})
    try:
        path = Path(ds.source).expanduser()
    except RuntimeError:  # "~someone/..." for a user that does not exist here
        raise FileNotFoundError(f"data source {ds.source!r}: {ds.source.split('/')[0]!r} is no user's home folder; "
                                "fix the source path") from None
    if path.exists():
        return _load_local(path, ds)
    mirror = mirror_dir(data.mirror)
    if (copy := find_in_mirror(ds.source, ds.split, ds.subset, mirror)) is not None:
        return _load_local(copy, ds)
    looks_local = (path.suffix in _FORMATS or ds.source.startswith((".", "/", "~"))
                   or (os.sep == "\\" and ":" in ds.source[:3]))
    if looks_local:
        raise DataUnavailable(unavailable_message(
            ds.source, ds.split, ds.subset, mirror, f"{path.absolute()} does not exist (a relative path resolves "
            f"against the recipe's folder, then the current directory {Path.cwd()})"))
    if not hub_reachable():  # only the local hub cache can help: ask it alone, at once, without network retries
        try:
            return _load_hub(ds, offline=True)
        except Exception:  # noqa: BLE001 -- not cached: say what to do instead
            raise DataUnavailable(unavailable_message(
                ds.source, ds.split, ds.subset, mirror, "the hub cannot be reached from this machine (nor is the set "
                "in the local hub cache)")) from None
    try:
        return _load_hub(ds)
    except Exception as e:
        raise ValueError(
            f"data source {ds.source!r} is not a local path (none at {path.absolute()}) and could not be loaded as "
            f"a hub data set (subset={ds.subset!r}, split={ds.split!r}): {_root_cause(e)}; give a local file path "
            "or check the name, subset and split"
        ) from e


def _load_hub(ds: DatasetConfig, offline: bool = False) -> datasets.Dataset:
    """A hub data set, with the columns of a known set renamed as its mirror copy names them (amc23's question ->
    problem); offline: from the local hub cache only."""
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    if offline:
        datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        raw = datasets.load_dataset(ds.source, ds.subset, split=ds.split)
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved
    ks = known_set(ds.source, ds.subset, ds.split)
    rename = {a: b for a, b in (ks.rename if ks else {}).items() if a in raw.column_names and b not in raw.column_names}
    return raw.rename_columns(rename) if rename else raw


def _template_columns(template: str) -> list[str]:
    """The columns a str.format template reads ("{meta[x]}" and "{meta.x}" read column "meta")."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"prompt_template {template!r} is not a valid format string ({e}); "
                         "write literal braces as {{ and }}") from e
    cols = []
    for f in fields:
        root = f.split(".")[0].split("[")[0]
        if not root or root.isdigit():
            raise ValueError(f"prompt_template {template!r} has a positional field {{{f}}}; "
                             "name a column, e.g. {question}")
        if root not in cols:
            cols.append(root)
    return cols


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _answer_text(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value).strip()


def _normalize_number(answer: str) -> str:
    """ "1,000" -> "1000", "18.0" stays "18.0"; anything that is not a plain number stays as it is."""
    plain = answer.replace(",", "")
    try:
        float(plain)
    except ValueError:
        return answer
    return plain


def load_dataset_rows(ds: DatasetConfig, data: DataConfig) -> datasets.Dataset:
    """Rows with "prompt" (template filled + data.instruction) and "answer" (gold answer string), plus the source's
    own columns (a source column named "prompt" or "answer" is replaced)."""
    ds.check()
    needed = _template_columns(ds.prompt_template)
    raw = _load_raw(ds, data)
    if ds.offset or (ds.limit is not None and ds.limit < len(raw)):
        end = len(raw) if ds.limit is None else min(len(raw), ds.offset + ds.limit)
        raw = raw.select(range(min(ds.offset, len(raw)), end))
    columns = list(raw.column_names)
    for c in needed:
        if c not in columns:
            raise ValueError(
                f"data source {ds.source!r}: prompt_template {ds.prompt_template!r} needs column {c!r}, which row 0 "
                f"does not have; the available columns are {columns}; fix prompt_template"
            )
    if ds.answer_column not in columns:
        raise ValueError(
            f"data source {ds.source!r}: answer_column {ds.answer_column!r} is not a column; the available columns "
            f"are {columns}; set answer_column"
        )

    values = {c: raw[c] for c in dict.fromkeys(needed + [ds.answer_column])}
    prompts, answers = [], []
    for i in range(len(raw)):
        row = {c: v[i] for c, v in values.items()}
        for c, v in row.items():
            if _missing(v):  # JSON null, an empty CSV cell, NaN
                present = [k for k, x in raw[i].items() if not _missing(x)]
                role = "answer_column" if c == ds.answer_column and c not in needed else "prompt_template"
                raise ValueError(
                    f"data source {ds.source!r}: row {i} (counting from 0) has no {c!r} (used by {role}); that row "
                    f"has columns {present}; fix the row or the {role}"
                )
        try:
            text = ds.prompt_template.format(**row)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
            raise ValueError(f"data source {ds.source!r}: prompt_template {ds.prompt_template!r} failed on row {i} "
                             f"({type(e).__name__}: {e}); the row has columns {columns}; fix prompt_template") from e
        answer = _answer_text(row[ds.answer_column])
        if ds.answer_after is not None:
            if ds.answer_after not in answer:
                raise ValueError(f"data source {ds.source!r}: row {i}'s {ds.answer_column!r} has no answer_after "
                                 f"marker {ds.answer_after!r}: {answer[-80:]!r}; fix the row or answer_after")
            answer = answer.rsplit(ds.answer_after, 1)[1].strip()
        prompts.append(text + data.instruction)
        answers.append(_normalize_number(answer))
    # add under temporary names first: removing every column of a table would lose its row count
    out = raw.add_column("__rlvr_prompt", prompts).add_column("__rlvr_answer", answers)
    out = out.remove_columns([c for c in ("prompt", "answer") if c in columns])
    return out.rename_columns({"__rlvr_prompt": "prompt", "__rlvr_answer": "answer"})


def prepare_prompts(
    rows: datasets.Dataset, tokenizer, data: DataConfig
) -> tuple[datasets.Dataset, list[list[int]], dict]:
    """Tokenised chat prompts with data.max_prompt_tokens applied by data.prompt_overflow; returns the kept rows,
    their prompt ids and {"num_rows" (rows given), "num_dropped_too_long", "num_truncated"}."""
    data.check_prompt_limits()
    ids = render_prompts(tokenizer, rows["prompt"], data.system_prompt, data.few_shot)
    limit, keep, kept_ids = data.max_prompt_tokens, [], []
    stats = {"num_rows": len(rows), "num_dropped_too_long": 0, "num_truncated": 0}
    for i, p in enumerate(ids):
        if len(p) <= limit:
            keep.append(i)
            kept_ids.append(p)
        elif data.prompt_overflow == "drop":
            stats["num_dropped_too_long"] += 1
        elif data.prompt_overflow == "truncate":
            keep.append(i)
            kept_ids.append(p[-limit:])
            stats["num_truncated"] += 1
        else:
            raise ValueError(
                f"row {i}'s prompt has {len(p)} tokens, over data.max_prompt_tokens={limit}; raise "
                "data.max_prompt_tokens or set data.prompt_overflow to drop or truncate"
            )
    return (rows if len(keep) == len(rows) else rows.select(keep)), kept_ids, stats


# -- a sampler whose position can be saved and restored exactly ------------------------------------------------------


def load_prompts(ds: DatasetConfig, key: str, data: DataConfig, tokenizer) -> tuple[datasets.Dataset, list[list[int]], dict]:
    """The rows of the data set at config key `key`, their chat-formatted prompt token ids, and the prompt-length
    statistics; an empty set, or one whose every prompt is too long, is a ValueError naming the key (a set that
    cannot be found: DataUnavailable)."""
    try:
        rows = load_dataset_rows(ds, data)
    except DataUnavailable as e:
        raise DataUnavailable(f"{key}: {e}") from None
    if len(rows) == 0:
        raise ValueError(f"{key}: the data set {ds.source!r} has no rows")
    rows, prompts, stats = prepare_prompts(rows, tokenizer, data)
    if not prompts:
        raise ValueError(f"{key}: every prompt is longer than data.max_prompt_tokens={data.max_prompt_tokens}")
    return rows, prompts, stats


def sample_seed(*keys: int) -> int:
    """A seed for one prompt's rollout from (run seed, step, prompt row, try): rollouts repeat on a rerun."""
    return int(np.random.SeedSequence([k & 0xFFFFFFFF for k in keys]).generate_state(1)[0] & 0x7FFFFFFF)


class PromptSampler:
    """Walks a fresh permutation of the rows each epoch (permutation e seeded by (seed, e)), across epoch bounds."""

    def __init__(self, num_rows: int, seed: int, shuffle: bool = True):
        if num_rows < 1:
            raise ValueError("the training data has no rows")
        self.num_rows, self.seed, self.shuffle = num_rows, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.num_rows))
        if self.shuffle:
            random.Random(f"{self.seed}-{epoch}").shuffle(order)  # str seeds hash with sha512: same in every process
        return order

    def next_indices(self, k: int) -> list[int]:
        if k < 0:
            raise ValueError(f"next_indices: k={k} must be >= 0")
        out: list[int] = []
        while len(out) < k:
            if self.position == self.num_rows:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            take = min(k - len(out), self.num_rows - self.position)
            out.extend(self._order[self.position : self.position + take])
            self.position += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_rows": self.num_rows,
                "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        missing = [k for k in ("epoch", "position", "seed", "num_rows", "shuffle") if k not in state]
        if missing:
            raise ValueError(f"sampler state lacks {missing}; it is not a PromptSampler.state_dict()")
        for key in ("num_rows", "seed", "shuffle"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state[key]!r}, this run has {getattr(self, key)!r}; resume with the "
                    "same training data and data.seed/data.shuffle, or start a fresh run"
                )
        if state["epoch"] < 0 or not 0 <= state["position"] <= self.num_rows:
            raise ValueError(f"sampler state epoch={state['epoch']}, position={state['position']} is out of range "
                             f"for {self.num_rows} rows")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
