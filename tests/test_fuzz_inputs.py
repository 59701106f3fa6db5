"""Fuzzing what a user hands the trainer: config overrides and recipes, data files, long prompts, model folders.

Every input either works or gives one clear error -- the problem, where it is (key, file, line or row) and the fix --
before anything expensive (a cluster, a model) starts. What is tried, property by property:

* config: dot-list overrides of existing keys with values of the wrong type; unknown keys at every level, with random
  nesting below them; any mix of real, container and made-up keys with YAML values (negative and huge numbers,
  nan/inf, null, empty, lists, dicts, interpolations, arbitrary unicode); random recipe files (mappings of real and
  made-up keys, lists and scalars at the top, empty files, invalid YAML, binary garbage). -> a Config, or a ConfigError
  naming the key (or the recipe file).
* data files: arbitrary bytes as .jsonl/.json/.csv/.parquet (empty, binary garbage, truncated JSON, rows that are not
  objects, null rows); generated tables written in all four formats with columns of one type or mixed types, huge and
  unicode strings (U+2028, NUL), rows missing the prompt or answer column or holding null/NaN there; CSV rows with too
  many or too few fields; random prompt templates. -> rows, or a ValueError naming the file, the line or row, the
  column and the key to change.
* long prompts: random prompts and limits under drop / truncate / error -> exact counts and cuts, the row named.
* model folders: any subset of config.json / weights / tokenizer files, unreadable config.json, a file, paths that do
  not exist; tokenizers without a chat template, with a broken one, or one that refuses a system message.

CONFIG_CASES pins the config inputs that fuzzing found escaping as raw OmegaConf/YAML errors or naming no key.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import shutil
import tempfile
import types
import typing
from pathlib import Path

import datasets
import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from rl.config import Config, ConfigError, load_config
from rl.models.chat import render_prompts
from rl.data.prompts import load_dataset_rows, prepare_prompts
from rl.config.data import DataConfig, DatasetConfig
from rl.models.resolve import EMBEDDED_MODELS, check_model_folder, resolve_model_path

SCALE = int(os.environ.get("RLVR_FUZZ_SCALE", "1"))  # RLVR_FUZZ_SCALE=20 for a long fuzzing session
FIXTURE_OK = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                            HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.fixture(autouse=True, scope="module")
def _datasets_cache(tmp_path_factory):
    """Keep the Arrow caches that load_dataset writes out of the home folder."""
    old = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = tmp_path_factory.mktemp("hf-datasets-cache")
    datasets.disable_progress_bars()
    yield
    datasets.config.HF_DATASETS_CACHE = old


# == 1. config ======================================================================================================


def _unwrap(t):
    """X for X, X | None and Optional[X]; the type itself otherwise."""
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return args[0] if len(args) == 1 else t
    return t


def _schema(cls, prefix: str = ""):
    """(dotted path, type) of every field of the config tree, containers (dataclasses) included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = _unwrap(hints[f.name])
        yield prefix + f.name, t
        if dataclasses.is_dataclass(t):
            yield from _schema(t, prefix + f.name + ".")


SCHEMA = dict(_schema(Config))
CONTAINERS = {"": Config} | {k: t for k, t in SCHEMA.items() if dataclasses.is_dataclass(t)}
SCALARS = {k: t for k, t in SCHEMA.items() if t in (int, float, bool, str)}
FIELDS = {prefix: {f.name for f in dataclasses.fields(cls)} for prefix, cls in CONTAINERS.items()}

IDENT = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)
_BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "y", "n", "t", "f", "0", "1", "null"}
_FLOAT_WORDS = {"nan", "inf", "infinity", "null"}
WORD = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,8}", fullmatch=True)
CONTAINER_VALUE = st.sampled_from(["[1, 2]", "[]", "{a: 1}", "{}", "[{x: 1}]", "[[]]"])
WRONG = {  # values a field of that type must refuse
    int: WORD.filter(lambda w: w.lower() not in _FLOAT_WORDS) | CONTAINER_VALUE
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()).map(repr),
    float: WORD.filter(lambda w: w.lower() not in _FLOAT_WORDS) | CONTAINER_VALUE,
    bool: WORD.filter(lambda w: w.lower() not in _BOOL_WORDS) | CONTAINER_VALUE,
    str: CONTAINER_VALUE,
}
YAML_VALUE = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(repr),
    st.sampled_from(["nan", ".nan", ".inf", "-.inf", "1e400", "-0", "0x1F", "1_000", "true", "False", "null", "~", "",
                     "'quoted'", '"dq"', "${name}", "${seed}", "${nope}", "${oc.env:HOME}", "${", "[1, [2, {a: b}]]",
                     "{rewards: [1]}", "[{name: math_verify}]", "- x", "a: b", "&x 1", "*x", "!!str 3", "%", "@", "`"]),
    CONTAINER_VALUE,
    WORD,
    st.text(max_size=20),
)
SAFE_VALUE = st.integers(-(2**40), 2**40).map(str) | WORD | CONTAINER_VALUE  # values YAML always parses
ANY_KEY = st.one_of(
    st.sampled_from(sorted(SCALARS)),
    st.sampled_from(sorted(k for k in CONTAINERS if k)),
    st.sampled_from(["rewards", "rewards[0].name", "rewards.0.weight", "eval_sets", "eval_sets.x", "eval_sets.x.source",
                     "data.arithmetic.operations", "learner.optim.betas", "learner.optim.betas[1]"]),
    st.lists(IDENT | st.sampled_from(["data", "train", "trainer", "rollout", "[0]", "0"]), min_size=1, max_size=4)
    .map(".".join),
)
ALL_KEYS = sorted(set(SCHEMA) | {"rewards", "eval_sets"}, key=len, reverse=True)


def _names(msg: str, word: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", msg) is not None


def _names_a_key(msg: str, keys: list[str]) -> bool:
    """The message names a part of one of the given keys (the first unknown one, say) or some key of the config."""
    parts = {p for k in keys for p in re.split(r"[.\[\]]", k) if p}
    return any(_names(msg, p) for p in parts) or any(_names(msg, k) for k in ALL_KEYS)


def _load_or_config_error(recipe, overrides):
    """load_config's result or its ConfigError; any other exception fails the property."""
    try:
        cfg = load_config(recipe, overrides)
    except ConfigError as e:
        assert not str(e).startswith("bad config: "), f"names no key: {e}"
        return e
    assert isinstance(cfg, Config)
    return cfg


@settings(max_examples=40 * SCALE, deadline=None)
@given(data=st.data())
def test_a_value_of_the_wrong_type_names_its_key(data):
    key = data.draw(st.sampled_from(sorted(SCALARS)), label="key")
    value = data.draw(WRONG[SCALARS[key]], label="value")
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}={value}"])
    assert key in str(e.value), str(e.value)


@settings(max_examples=40 * SCALE, deadline=None)
@given(prefix=st.sampled_from(sorted(CONTAINERS)), name=IDENT, deeper=st.lists(IDENT, max_size=3), value=SAFE_VALUE)
def test_an_unknown_key_is_named(prefix, name, deeper, value):
    assume(name not in FIELDS[prefix])
    key = ".".join(([prefix] if prefix else []) + [name] + deeper)
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}={value}"])
    assert _names(str(e.value), name), str(e.value)


@settings(max_examples=80 * SCALE, deadline=None)
@given(overrides=st.lists(st.tuples(ANY_KEY, YAML_VALUE), max_size=4))
def test_any_overrides_give_a_config_or_a_config_error_naming_a_key(overrides):
    result = _load_or_config_error(None, [f"{k}={v}" for k, v in overrides])
    if isinstance(result, ConfigError):
        assert _names_a_key(str(result), [k for k, _ in overrides]), str(result)


_YAML_SCALAR = st.none() | st.booleans() | st.integers(-(10**6), 10**20) | st.floats() | st.text(max_size=12)
_YAML_KEY = st.sampled_from(sorted({k.split(".")[-1] for k in SCHEMA} | set(FIELDS[""]))) | IDENT
_YAML_TREE = st.recursive(_YAML_SCALAR, lambda c: st.lists(c, max_size=3) | st.dictionaries(_YAML_KEY, c, max_size=4),
                          max_leaves=12)
RECIPE = st.one_of(
    st.dictionaries(_YAML_KEY, _YAML_TREE, max_size=5).map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode()),
    _YAML_TREE.map(lambda t: yaml.safe_dump(t).encode()),  # a list or a scalar at the top
    st.text(max_size=80).map(str.encode),
    st.binary(max_size=40),
    st.sampled_from([b"", b"\n", b"# only a comment\n", b"---\n", b"trainer: [\n", b"a: b: c\n", b"\t- x", b"...",
                     b"trainer:\n  total_steps: 3\ntrainer:\n  total_steps: 4\n", b"---\nseed: 1\n---\nseed: 2\n",
                     b"&a [*a]", b"!!python/object:os.system {}", b"\xff\xfe\x00"]),
)


@settings(max_examples=50 * SCALE, deadline=None)
@given(content=RECIPE)
def test_any_recipe_file_gives_a_config_or_a_config_error(tmp_path_factory, content):
    path = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp())) / "recipe.yaml"
    path.write_bytes(content)
    result = _load_or_config_error(path, None)
    if isinstance(result, ConfigError):
        msg = str(result)
        assert str(path) in msg or _names_a_key(msg, _top_keys(content)), msg


def _top_keys(content: bytes) -> list[str]:
    """The top-level keys of a recipe (OmegaConf reads a lone string at the top as a key)."""
    try:
        top = yaml.safe_load(content)
    except (yaml.YAMLError, ValueError):
        return []
    return [str(k) for k in top] if isinstance(top, dict) else [top] if isinstance(top, str) else []


CONFIG_CASES = [  # (recipe text or None, overrides, what the ConfigError should name)
    pytest.param(None, ["rewards={a: 1}"], "rewards", id="override-dict-for-a-list"),
    pytest.param(None, ["eval_sets=[1]"], "eval_sets", id="override-list-for-a-dict"),
    pytest.param(None, ["eval_sets=[1, 2]", "eval_sets.x=0"], "eval_sets", id="override-into-a-replaced-section"),
    pytest.param(None, ["trainer=3"], "trainer", id="override-scalar-for-a-section"),
    pytest.param(None, ["data.train=[]"], "data.train", id="override-list-for-a-section"),
    pytest.param(None, ["=="], "==", id="override-invalid-yaml-value"),
    pytest.param(None, ["name=\x00"], "name", id="override-control-character"),
    pytest.param(None, ["rewards=[{name: math_verify, weight: abc}]"], "rewards[0].weight",
                 id="override-list-item-key"),
    pytest.param(None, ["rewards=[{name: math_verify}, {name: format, weight: x}]"], "rewards[1].weight",
                 id="override-second-list-item-key"),
    pytest.param(None, ["rewards[2].weight=1"], "rewards[2]", id="override-a-missing-list-item"),
    pytest.param(None, ["data.train.limit=0"], "data.train.limit", id="override-limit-zero"),
    pytest.param(None, ["data.prompt_overflow=clip"], "data.prompt_overflow", id="override-overflow-policy"),
    pytest.param(b"rewards:\n- name: math_verify\n  weight: abc\n", None, "rewards[0].weight",
                 id="recipe-list-item-key"),
    pytest.param(b"- 1\n- 2\n", None, "recipe", id="recipe-a-list"),
    pytest.param(b"3\n", None, "recipe", id="recipe-a-scalar"),
    pytest.param(b"trainer: [\n", None, "recipe", id="recipe-invalid-yaml"),
    pytest.param(b"seed: 1\nseed: 2\n", None, "recipe", id="recipe-duplicate-key"),
    pytest.param(b"\xff\xfe\x00", None, "recipe", id="recipe-not-utf8"),
    pytest.param(b"trainer: 3\n", None, "trainer", id="recipe-scalar-for-a-section"),
    pytest.param(b"rewards: {a: 1}\n", None, "rewards", id="recipe-dict-for-a-list"),
    pytest.param(b"? \n", None, "recipe", id="recipe-a-null-key"),
    pytest.param("DIR", None, "recipe", id="recipe-a-directory"),
]


def test_a_mapping_given_whole_replaces_a_free_keyed_one_and_sets_fields_of_a_section():
    assert load_config("recipes/quickstart.yaml", ["eval_sets={}"]).eval_sets == {}
    assert list(load_config("recipes/quickstart.yaml", ["eval_sets={g: {source: x.jsonl}}"]).eval_sets) == ["g"]
    assert list(load_config("recipes/quickstart.yaml", ["eval_sets.g.source=x.jsonl"]).eval_sets) == ["svamp", "g"]
    trainer = load_config("recipes/quickstart.yaml", ["trainer={total_steps: 3}"]).trainer
    assert trainer.total_steps == 3 and trainer.prompts_per_step == load_config("recipes/quickstart.yaml").trainer.prompts_per_step


def test_a_list_item_field_can_be_overridden():
    cfg = load_config(None, ["rewards=[{name: math_verify}, {name: format}]", "rewards[1].weight=0.25"])
    assert [(r.name, r.weight) for r in cfg.rewards] == [("math_verify", 1.0), ("format", 0.25)]


@pytest.mark.parametrize("recipe, overrides, names", CONFIG_CASES)
def test_config_errors_name_the_key_or_file(tmp_path, recipe, overrides, names):
    path = None
    if recipe == "DIR":
        path = tmp_path
    elif recipe is not None:
        path = tmp_path / "recipe.yaml"
        path.write_bytes(recipe)
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    assert (str(path) if names == "recipe" else names) in str(e.value), str(e.value)


# == 2. data files ==================================================================================================

FIX_WORDS = ("fix", "give", "set ", "use ", "write", "save", "quote", "keep", "point", "raise", "choose", "name a")
FORMATS = [".jsonl", ".json", ".csv", ".parquet"]


def _new_dir(factory) -> Path:
    return Path(tempfile.mkdtemp(dir=factory.getbasetemp()))  # a fresh folder per example: no stale datasets cache


def _assert_clear(err: BaseException, path: Path) -> str:
    """One ValueError that names the file (or the source) and says what to do."""
    msg = str(err)
    assert isinstance(err, ValueError), f"{type(err).__name__}: {msg}"
    assert str(path) in msg, msg
    assert any(w in msg for w in FIX_WORDS), f"no fix in: {msg}"
    return msg


def _check_rows(rows: datasets.Dataset) -> None:
    assert len(rows) >= 1 and {"prompt", "answer"} <= set(rows.column_names)
    assert all(isinstance(p, str) for p in rows["prompt"]) and all(isinstance(a, str) for a in rows["answer"])


_JSON_ROW = st.dictionaries(st.sampled_from(["question", "answer", "text", "x"]),
                            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10), max_size=4)


@st.composite
def _cut(draw, content: bytes) -> bytes:
    """The content, or a prefix of it (a file cut short), or with a byte changed."""
    how = draw(st.sampled_from(["whole", "whole", "prefix", "flip"]))
    if how == "whole" or not content:
        return content
    i = draw(st.integers(0, len(content) - 1))
    return content[:i] if how == "prefix" else content[:i] + bytes([draw(st.integers(0, 255))]) + content[i + 1:]


def _parquet_bytes() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"question": ["What is 2+2?", "x"], "answer": ["4", "y"]}), buf)
    return buf.getvalue()


GARBAGE = st.one_of(
    st.just(_parquet_bytes()).flatmap(_cut),  # a good Parquet file, whole, cut short, or with a byte changed
    st.lists(_JSON_ROW | _JSON_ROW | st.none() | st.integers(), min_size=1, max_size=5)
    .map(lambda rows: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()).flatmap(_cut),
    st.lists(_JSON_ROW, min_size=1, max_size=5).map(lambda rows: json.dumps(rows, ensure_ascii=False).encode())
    .flatmap(_cut),
    st.lists(st.lists(st.sampled_from(["question", "answer", "a", "1", '"x,y"', ""]), min_size=1, max_size=3),
             min_size=1, max_size=5).map(lambda rows: "".join(",".join(r) + "\n" for r in rows).encode()).flatmap(_cut),
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b" \n\t\n", b"null\n", b"null\n{\"question\": \"a\", \"answer\": \"1\"}\n", b"[null]",
                     b"[null, {\"question\": \"a\", \"answer\": \"1\"}]", b"[1, 2]", b"[]", b"{}", b"{}\n{}\n",
                     b"true", b"\"text\"\n", b'{"question": "a", "answer": "1"', b'{"question": "a"}\n{"answer": 1}',
                     b"[" * 5000, b"{\"a\": " * 3000, b"\xef\xbb\xbf{\"question\": \"a\", \"answer\": \"1\"}",
                     b"question,answer\n", b"question,answer\n\"a,1\n", b"PAR1", b"PAR1" + b"\x00" * 60 + b"PAR1",
                     b"question\tanswer\na\t1\n", b"\x00" * 100]),
)


@settings(FIXTURE_OK, max_examples=70 * SCALE)
@given(ext=st.sampled_from(FORMATS), content=GARBAGE,
       template=st.sampled_from(["{question}"] * 4 + ["{question} {answer}", "{text}", "plain"]),
       answer=st.sampled_from(["answer"] * 4 + ["question", "text"]))
def test_any_bytes_in_any_format_give_rows_or_one_clear_error(tmp_path_factory, ext, content, template, answer):
    path = _new_dir(tmp_path_factory) / f"data{ext}"
    path.write_bytes(content)
    try:
        rows = load_dataset_rows(DatasetConfig(source=str(path), prompt_template=template, answer_column=answer),
                                 DataConfig())
    except Exception as e:  # noqa: BLE001
        _assert_clear(e, path)
        event("error")
    else:
        _check_rows(rows)
        event("rows")


# -- generated tables in all four formats -------------------------------------------------------------------------

_TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "\u2028", "a\u2028b", "x\x00y", "é" * 20_000,
                                                         "{question}", "1,000", " 42 ", "null", "NaN", "[1]"]))
_TYPED = {
    "text": _TEXT,
    "int": st.integers(-(2**62), 2**62),
    "float": st.floats(allow_nan=False, allow_infinity=False),
    "bool": st.booleans(),
    "list": st.lists(st.integers(-5, 5), max_size=3),
    "dict": st.dictionaries(st.sampled_from("ab"), st.integers(0, 3), max_size=2),
}
_CELL_MISSING = object()  # the row lacks the key


@st.composite
def tables(draw):
    """(rows, {column: kind}) where kind is one of _TYPED or "mixed"; cells may be missing, null or NaN."""
    cols = {c: draw(st.sampled_from(sorted(_TYPED) + ["mixed"])) for c in ("question", "answer", "extra")}
    absent = draw(st.sampled_from([(), (), (), (), ("question",), ("answer",), ("question", "answer")]))
    present = set(cols) - set(absent) - (set() if draw(st.booleans()) else {"extra"})
    holes = draw(st.booleans())  # half the tables have no missing cells at all
    n = draw(st.integers(1, 6))
    rows = []
    for _ in range(n):
        row = {}
        for c in sorted(present):
            kind = cols[c]
            value = draw(st.one_of(*_TYPED.values()) if kind == "mixed" else _TYPED[kind])
            hole = draw(st.sampled_from([None] * 9 + ["missing", "null", "nan"])) if holes else None
            if hole == "missing":
                continue
            row[c] = None if hole == "null" else math.nan if hole == "nan" else value
        rows.append(row)
    return rows, {c: cols[c] for c in present}


_CSV_NA = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
           "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}


def _write(path: Path, rows: list[dict], fmt: str, cols: list[str]) -> bool:
    """Write rows as fmt (CSV and Parquet with columns cols); False when the format cannot hold them (Parquet wants
    one type per column)."""
    if fmt == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif fmt == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    elif fmt == ".csv":
        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(cols)
        for r in rows:
            w.writerow(["" if r.get(c) is None or (isinstance(r.get(c), float) and math.isnan(r[c])) else
                        json.dumps(r[c]) if isinstance(r[c], (list, dict)) else r[c] for c in cols])
        path.write_bytes(buf.getvalue().encode("utf-8"))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            # (pa.Table.from_pylist would take the columns of row 0 only)
            pq.write_table(pa.table({c: [r.get(c) for r in rows] for c in cols}), str(path))
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            return False
    return True


def _is_missing(v, fmt: str) -> bool:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return True
    return fmt == ".csv" and isinstance(v, str) and v in _CSV_NA


_ROW_ERROR = re.compile(r"row (\d+) \(counting from 0\) has no '(question|answer)' \(used by "
                        r"(prompt_template|answer_column)\); that row has columns \[.*\]; fix the row or the \3")


@settings(FIXTURE_OK, max_examples=45 * SCALE)
@given(table=tables(), fmt=st.sampled_from(FORMATS), instruction=st.sampled_from(["", " Answer:"]))
def test_tables_load_or_name_the_row_the_column_and_the_key(tmp_path_factory, table, fmt, instruction):
    rows, kinds = table
    path = _new_dir(tmp_path_factory) / f"data{fmt}"
    assume(_write(path, rows, fmt, sorted(kinds)))
    # what the loader sees: a table has every column in every row; CSV reads empty cells and NA words as missing
    columns = set(kinds) if fmt in (".csv", ".parquet") else {c for r in rows for c in r}
    first = next((i for i, r in enumerate(rows) if any(_is_missing(r.get(c), fmt) for c in ("question", "answer"))),
                 None)
    # a column of mixed types is read as JSON values: a text cell "null" then reads as missing too
    mixed = fmt != ".csv" and any(kinds.get(c) == "mixed" for c in ("question", "answer"))
    try:
        out = load_dataset_rows(DatasetConfig(source=str(path)), DataConfig(instruction=instruction))
    except Exception as e:  # noqa: BLE001
        msg = _assert_clear(e, path)
        event(f"error {fmt}")
        if not columns:
            assert "has no rows (or its rows have no fields)" in msg or "is empty" in msg, msg
        elif "question" not in columns:
            assert "prompt_template" in msg and "'question'" in msg, msg
        elif "answer" not in columns:
            assert "answer_column" in msg and "'answer'" in msg, msg
        else:
            found = _ROW_ERROR.search(msg)
            assert found and (first is not None or mixed), f"unexpected error: {msg}"
            assert mixed or int(found.group(1)) == first, msg
        return
    event(f"rows {fmt}")
    _check_rows(out)
    assert "question" in columns and "answer" in columns and first is None
    assert len(out) == len(rows), "a row was lost or made up"
    if fmt != ".csv" and kinds["question"] == "text":  # (CSV re-reads text: "007" comes back as 7)
        assert out["prompt"] == [r["question"] + instruction for r in rows]
    if fmt != ".csv" and kinds["answer"] == "text":
        assert out["answer"] == [_normalized(r["answer"]) for r in rows]


def _normalized(answer: str) -> str:
    a = answer.strip()
    try:
        float(a.replace(",", ""))
    except ValueError:
        return a
    return a.replace(",", "")


@settings(FIXTURE_OK, max_examples=30 * SCALE)
@given(lines=st.lists(st.lists(st.sampled_from(["a", "1", "x y", "", "2.5"]), min_size=1, max_size=4),
                      min_size=1, max_size=6))
def test_csv_rows_with_more_or_fewer_fields_than_the_header(tmp_path_factory, lines):
    path = _new_dir(tmp_path_factory) / "data.csv"
    path.write_text("question,answer\n" + "".join(",".join(f) + "\n" for f in lines))
    wide = next((n for n, f in enumerate(lines, start=2) if len(f) > 2), None)  # its line number
    rows = [f for f in lines if f != [""]]  # a blank line is no row (as in JSON Lines)
    short = next((i for i, f in enumerate(rows) if len(f) < 2 or not f[0] or not f[1]), None)
    try:
        out = load_dataset_rows(DatasetConfig(source=str(path)), DataConfig())
    except ValueError as e:
        msg = _assert_clear(e, path)
        if wide is not None:
            assert f"line {wide}: {len(lines[wide - 2])} fields, but the header has 2" in msg, msg
        elif rows:
            assert f"row {short} (counting from 0) has no '" in msg, msg
        else:
            assert "has no rows" in msg, msg
        return
    assert wide is None and short is None and len(out) == len(rows)


_TEMPLATE = st.lists(st.sampled_from(list("{}[].!:0 ax") + ["question", "answer", "num_ops", "nope", "{{", "}}"]),
                     max_size=10).map("".join)


@settings(max_examples=60 * SCALE, deadline=None)
@given(template=_TEMPLATE, answer_column=st.sampled_from(["answer", "num_ops", "question", "nope", ""]))
def test_any_prompt_template_works_or_names_prompt_template(template, answer_column):
    from rl.config.data import ArithmeticConfig

    data = DataConfig(arithmetic=ArithmeticConfig(num_train=3, num_eval=0))
    ds = DatasetConfig(source="arithmetic", prompt_template=template, answer_column=answer_column)
    try:
        out = load_dataset_rows(ds, data)
    except ValueError as e:
        msg = str(e)
        assert ("prompt_template" in msg or "answer_column" in msg) and any(w in msg for w in FIX_WORDS), msg
        return
    assert len(out) == 3 and all(isinstance(p, str) for p in out["prompt"])
    assert out["prompt"] == [template.format(**r) for r in out.remove_columns(["prompt", "answer"])]


# == 3. prompts longer than data.max_prompt_tokens ===================================================================


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


_PROMPT = st.one_of(st.text(max_size=80), st.integers(0, 400).map(lambda n: "seven apples " * n))


@settings(FIXTURE_OK, max_examples=40 * SCALE)
@given(prompts=st.lists(_PROMPT, min_size=1, max_size=8), limit=st.integers(1, 120),
       policy=st.sampled_from(["drop", "truncate", "error"]), system=st.sampled_from([None, "Be brief."]))
def test_overflow_policies_count_and_cut_exactly(tokenizer, prompts, limit, policy, system):
    n = len(prompts)
    rows = datasets.Dataset.from_dict({"prompt": prompts, "answer": ["1"] * n, "idx": list(range(n))})
    data = DataConfig(max_prompt_tokens=limit, prompt_overflow=policy, system_prompt=system)
    full = render_prompts(tokenizer, prompts, system)
    long = [i for i, p in enumerate(full) if len(p) > limit]
    event(f"{policy}: {'some' if long else 'no'} prompt over the limit")
    if policy == "error" and long:
        with pytest.raises(ValueError) as e:
            prepare_prompts(rows, tokenizer, data)
        msg = str(e.value)
        assert f"row {long[0]}'s prompt has {len(full[long[0]])} tokens" in msg, msg
        assert "data.max_prompt_tokens" in msg and "data.prompt_overflow" in msg, msg
        return
    kept, ids, stats = prepare_prompts(rows, tokenizer, data)
    assert stats["num_rows"] == len(prompts)
    assert len(kept) == len(ids) == len(prompts) - stats["num_dropped_too_long"]  # kept + dropped == total
    assert all(len(p) <= limit for p in ids)
    if policy == "drop":
        assert stats["num_dropped_too_long"] == len(long) and stats["num_truncated"] == 0
        assert kept["idx"] == [i for i in range(len(prompts)) if i not in long]
        assert ids == [full[i] for i in kept["idx"]]
    else:
        assert stats["num_truncated"] == (len(long) if policy == "truncate" else 0)
        assert stats["num_dropped_too_long"] == 0 and kept["idx"] == list(range(len(prompts)))
        for i, p in enumerate(ids):
            assert p == (full[i][-limit:] if i in long else full[i])
            assert len(p) == limit if i in long else len(p) == len(full[i])  # a cut prompt has exactly the limit


@settings(max_examples=30 * SCALE, deadline=None)
@given(policy=st.text(max_size=10), limit=st.integers(-5, 3))
def test_bad_overflow_settings_name_their_key(policy, limit):
    rows = datasets.Dataset.from_dict({"prompt": ["hi"], "answer": ["1"]})
    data = DataConfig(max_prompt_tokens=limit, prompt_overflow=policy)

    class NoTokenizer:  # the settings are checked before any tokenizing
        chat_template = None

    if policy in ("drop", "truncate", "error") and limit >= 1:
        return
    with pytest.raises(ValueError) as e:
        prepare_prompts(rows, NoTokenizer(), data)
    key = "data.prompt_overflow" if policy not in ("drop", "truncate", "error") else "data.max_prompt_tokens"
    assert key in str(e.value), str(e.value)


# == 4. model folders and chat templates ============================================================================

_MODEL_FILES = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json",
                "vocab.json", "generation_config.json"]


@settings(FIXTURE_OK, max_examples=100 * SCALE)
@given(files=st.sets(st.sampled_from(_MODEL_FILES)),
       config=st.sampled_from(['{"model_type": "llama"}', "", "{oops", "[1, 2]", "\xff"]))
def test_a_model_folder_is_complete_or_named_with_what_it_lacks(tmp_path_factory, files, config):
    folder = _new_dir(tmp_path_factory)
    for name in files:
        (folder / name).write_text(config if name == "config.json" else "{}")
    has_weights = {"model.safetensors", "pytorch_model.bin"} & files
    has_tokenizer = {"tokenizer.json", "vocab.json"} & files
    good_config = config.startswith("{\"")
    try:
        out = resolve_model_path(str(folder))
    except ValueError as e:
        msg = str(e)
        assert f"model.path={str(folder)!r}" in msg and any(w in msg for w in FIX_WORDS), msg
        if "config.json" not in files:
            assert "has no config.json" in msg
        elif not good_config:
            assert "config.json" in msg
        elif not has_weights:
            assert "has no weights" in msg
        else:
            assert not has_tokenizer and "has no tokenizer" in msg
        return
    assert out == str(folder.resolve()) and "config.json" in files and good_config and has_weights and has_tokenizer


_PATH_CHARS = st.lists(st.sampled_from(list("abc-_.é /~") + ["..", "//"]), min_size=1, max_size=12).map("".join)


@settings(FIXTURE_OK, max_examples=100 * SCALE)
@given(name=_PATH_CHARS, kind=st.sampled_from(["relative", "absolute", "file"]))
def test_a_model_path_that_is_not_a_folder_is_named(tmp_path_factory, monkeypatch, name, kind):
    base = _new_dir(tmp_path_factory)
    monkeypatch.chdir(base)  # relative paths resolve in an empty folder
    assume(name.strip() and name.lower() not in EMBEDDED_MODELS)
    path = str(base / name.lstrip("/")) if kind == "absolute" else name
    if kind == "file":
        path = str(base / "weights.safetensors")
        Path(path).write_bytes(b"\x00" * 16)
    try:
        out = resolve_model_path(path)
    except (ValueError, FileNotFoundError) as e:
        msg = str(e)
        assert "model.path" in msg and any(w in msg for w in FIX_WORDS), msg
        if kind == "file":
            assert "is a file" in msg
        return
    # only a name that can be a hub id (name or org/name) that is not here is passed on, unchanged
    assert kind == "relative" and out == path and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path), out


def test_an_empty_model_path_is_named():
    with pytest.raises(ValueError, match="model.path is empty"):
        resolve_model_path("")
    with pytest.raises(ValueError, match="is a file"):
        check_model_folder(Path(__file__))


def _tokenizer_copy(smollm2_path: str, folder: Path, template: str | None) -> Path:
    """The SmolLM2 tokenizer (and config) in a folder of its own, with the given chat template or none."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(Path(smollm2_path) / name, folder / name)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    if template is not None:
        (folder / "chat_template.jinja").write_text(template)
    return folder


CHAT_TEMPLATE_CASES = [
    pytest.param(None, None, ["has no chat template; set one", "chat_template.jinja", "model.path"], id="missing"),
    pytest.param("", None, ["has no chat template; set one"], id="empty"),
    pytest.param("{% for m in messages %}{{ m['content'] }", None, ["chat template", "failed", "TemplateSyntaxError",
                                                                    "fix the template"], id="broken-jinja"),
    pytest.param("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                 "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}", "Be brief.",
                 ["System role not supported", "unset data.system_prompt"], id="refuses-a-system-message"),
]


@pytest.mark.parametrize("template, system, words", CHAT_TEMPLATE_CASES)
def test_a_missing_or_broken_chat_template_is_one_clear_error(smollm2_path, tmp_path, template, system, words):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_tokenizer_copy(smollm2_path, tmp_path / "tok", template))
    rows = datasets.Dataset.from_dict({"prompt": ["What is 2+2?"], "answer": ["4"]})
    with pytest.raises(ValueError) as e:
        prepare_prompts(rows, tok, DataConfig(system_prompt=system))
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert str(tmp_path / "tok") in str(e.value)  # which tokenizer


@pytest.mark.parametrize("case", ["no-chat-template", "bad-data-row", "no-weights"])
def test_the_trainer_fails_on_bad_input_before_starting_anything(smollm2_path, tmp_path, monkeypatch, case):
    """The errors above reach the user from Trainer(...) before the cluster, the engines or a model load."""
    import ray

    from rl.train import trainer as trainer_mod

    def refuse(*args, **kwargs):
        raise AssertionError("expensive work started before the bad input was reported")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(trainer_mod.Trainer, "_start_cluster", refuse)
    model = _tokenizer_copy(smollm2_path, tmp_path / "model", None if case == "no-chat-template" else
                            (Path(smollm2_path) / "chat_template.jinja").read_text())
    if case != "no-weights":
        (model / "model.safetensors").write_bytes(b"\x00" * 16)  # never loaded: the error comes first
    data = tmp_path / "train.jsonl"
    rows = [{"question": "What is 2+2?", "answer": "4"}] * 3
    if case == "bad-data-row":
        rows = rows + [{"question": "What is 3+3?"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [f"model.path={model}", f"data.train.source={data}", "data.eval=null",
                             f"output_dir={tmp_path / 'run'}", "resume=none"])
    expected = {"no-chat-template": "has no chat template", "bad-data-row": "row 3 (counting from 0) has no 'answer'",
                "no-weights": "has no weights"}[case]
    with pytest.raises(ValueError, match=re.escape(expected)):
        trainer_mod.Trainer(cfg)
    assert not (tmp_path / "run").exists()  # nothing written either


# == 5. inputs that used to pass every early check and fail only once Ray and vLLM ran (issue 18) ===================

LATE_CONFIG_CASES = [  # (overrides, words the ConfigError must hold: the key, then the fix)
    pytest.param(["learner.optim.schedule=cosin"], ["learner.optim.schedule='cosin'", "did you mean 'cosine'"],
                 id="schedule-typo"),
    pytest.param(["learner.optim.schedule=reduce_lr_on_plateau"], ["learner.optim.schedule", "choose one of"],
                 id="schedule-that-needs-a-metric"),
    pytest.param(["rollout.dtype=bf16"], ["rollout.dtype='bf16'", "'bfloat16'"], id="rollout-dtype-bf16"),
    pytest.param(["learner.dtype=fp32"], ["learner.dtype='fp32'", "'float32'"], id="learner-dtype"),
    pytest.param(["learner.mixed_precision=bf16"], ["learner.mixed_precision='bf16'", "or null"],
                 id="mixed-precision-bf16"),
    pytest.param(["rollout.sampling.top_p=0"], ["rollout.sampling.top_p=0.0", "(0, 1]"], id="top-p-zero"),
    pytest.param(["rollout.sampling.top_k=0"], ["rollout.sampling.top_k=0", "-1 (off) or >= 1"], id="top-k-zero"),
    pytest.param(["rollout.eval_sampling.max_tokens=5000"],
                 ["rollout.eval_sampling.max_tokens (5000)", "rollout.max_model_len", "raise it"], id="eval-too-long"),
    pytest.param(["rollout.eval_sampling.temperature=-1"], ["rollout.eval_sampling.temperature=-1.0", ">= 0"],
                 id="eval-temperature-negative"),
    pytest.param(["rollout.eval_sampling.top_p=1.5"], ["rollout.eval_sampling.top_p=1.5"], id="eval-top-p"),
    pytest.param(["rollout.eval_sampling.n=0"], ["rollout.eval_sampling.n=0", ">= 1"], id="eval-n-zero"),
]


@pytest.mark.parametrize("overrides, words", LATE_CONFIG_CASES)
def test_values_an_engine_or_the_learner_would_refuse_are_named_at_load(overrides, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


@pytest.mark.parametrize("content", [b"", b"\n", b"# only a comment\n", b"---\n", b"{}\n"])
def test_an_empty_recipe_is_an_error_not_the_defaults(tmp_path, content):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="is empty: it would train on the built-in defaults") as e:
        load_config(path)
    assert str(path) in str(e.value)
    assert load_config(None).trainer.total_steps >= 1  # no recipe at all: the defaults, on purpose


REWARD_FILE = """\
import json

def brevity(prompts, completions, **columns):
    return [0.0] * len(completions)

def one_argument(completions):
    return [0.0] * len(completions)

def needs_gold(prompts, completions, gold):
    return [0.0] * len(completions)

def no_columns(prompts, completions):
    return [0.0] * len(completions)

def per_sample_one(prompt):
    return 0.0

class Judge:
    def __init__(self, target_words: int = 25):
        self.target = target_words

    def __call__(self, prompts, completions, **columns):
        return [0.0] * len(completions)

class NeedsModel:
    def __init__(self, model: str):
        self.model = model

    def __call__(self, prompts, completions, **columns):
        return [0.0] * len(completions)

class NoCall:
    pass
"""

REWARD_CASES = [  # (rewards[0] spec with FILE for the reward file, words of the error)
    pytest.param("{fn: 'FILE:one_argument'}", ["rewards[0]", "one_argument(completions)",
                 "fn(prompts, completions, **columns)", "def one_argument(prompts, completions, **columns)"],
                 id="function-takes-one-argument"),
    pytest.param("{fn: 'FILE:per_sample_one', per_sample: true}", ["rewards[0]", "fn(prompt, completion, **row)",
                 "def per_sample_one(prompt, completion, **row)"], id="per-sample-takes-one-argument"),
    pytest.param("{fn: 'FILE:no_columns'}", ["rewards[0]", "passes the data's columns as keyword arguments",
                 "answer", "trainer_step", "add **columns"], id="function-without-columns"),
    pytest.param("{fn: 'FILE:needs_gold'}", ["rewards[0]", "missing a required argument: 'gold'", "add **columns"],
                 id="function-names-a-column-the-data-lacks"),
    pytest.param("{fn: 'FILE:Judge', kwargs: {targt_words: 3}}", ["rewards[0]", "Judge(target_words: int = 25)",
                 "unexpected keyword argument 'targt_words'", "rewards[0].kwargs"], id="class-kwargs-do-not-bind"),
    pytest.param("{fn: 'FILE:NeedsModel'}", ["rewards[0]", "missing a required argument: 'model'",
                 "rewards[0].kwargs"], id="class-kwargs-missing"),
    pytest.param("{fn: 'FILE:NoCall'}", ["rewards[0]", "class NoCall has no __call__", "def __call__(self, prompts"],
                 id="class-without-call"),
    pytest.param("{fn: 'FILE:brevty'}", ["rewards[0]", "has no attribute 'brevty'", "did you mean 'brevity'",
                 "it defines Judge, NeedsModel, NoCall, brevity, needs_gold, no_columns, one_argument, per_sample_one"],
                 id="wrong-function-name-lists-the-names"),
    pytest.param("{fn: 'MISSING:f'}", ["rewards[0]", "imports 'no_such_package_xyz', which is not installed",
                 "pip install no_such_package_xyz"], id="file-imports-a-missing-module"),
]


def _bad_input_config(smollm2_path: str, tmp_path: Path, overrides: list[str]) -> Config:
    """A config over a model folder whose weights are never loaded (the errors come first) and 8 arithmetic rows."""
    model = _tokenizer_copy(smollm2_path, tmp_path / "model", (Path(smollm2_path) / "chat_template.jinja").read_text())
    (model / "model.safetensors").write_bytes(b"\x00" * 16)
    return load_config(None, [f"model.path={model}", "data.arithmetic.num_train=8", "data.eval=null",
                              f"output_dir={tmp_path / 'run'}", "resume=none", *overrides])


def _refuse_ray(monkeypatch):
    import ray

    from rl.train import trainer as trainer_mod

    def refuse(*args, **kwargs):
        raise AssertionError("expensive work started before the bad input was reported")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(trainer_mod.Trainer, "_start_cluster", refuse)
    return trainer_mod.Trainer


@pytest.mark.parametrize("spec, words", REWARD_CASES)
def test_reward_code_that_cannot_take_the_trainers_call_fails_before_ray(smollm2_path, tmp_path, monkeypatch, spec,
                                                                          words):
    (tmp_path / "rewards.py").write_text(REWARD_FILE)
    (tmp_path / "missing.py").write_text("import no_such_package_xyz\n\ndef f(prompts, completions, **kw):\n    pass\n")
    spec = spec.replace("FILE", str(tmp_path / "rewards.py")).replace("MISSING", str(tmp_path / "missing.py"))
    trainer = _refuse_ray(monkeypatch)
    with pytest.raises(ValueError) as e:
        trainer(_bad_input_config(smollm2_path, tmp_path, [f"rewards=[{spec}]"]))
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert "PYTHONPATH" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_a_context_longer_than_the_model_takes_fails_before_ray(smollm2_path, tmp_path, monkeypatch):
    trainer = _refuse_ray(monkeypatch)
    with pytest.raises(ValueError) as e:
        trainer(_bad_input_config(smollm2_path, tmp_path, ["rollout.max_model_len=8200"]))
    msg = str(e.value)
    assert "rollout.max_model_len=8200 is above the model's max_position_embeddings (8192" in msg, msg
    assert "set rollout.max_model_len=8192 or lower" in msg, msg


@pytest.fixture
def offline(monkeypatch):
    """No hub (as on a machine without network): HF_HUB_OFFLINE=1 and the reachability check answers no."""
    from rl.data import sources as data_sources

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(data_sources, "hub_reachable", lambda: False)
    monkeypatch.setenv("HF_HOME", str(Path(tempfile.mkdtemp())))  # an empty hub cache


MISSING_MODEL = ("no such folder", "a relative path in a recipe is looked up in the recipe's folder, then the current "
                 "directory", "the hub cannot be reached", "hf download")


def test_a_hub_id_offline_is_one_line_naming_model_path(smollm2_path, tmp_path, monkeypatch, offline):
    trainer = _refuse_ray(monkeypatch)
    cfg = _bad_input_config(smollm2_path, tmp_path, ["model.path=someorg/no-such-model"])
    with pytest.raises(FileNotFoundError) as e:
        trainer(cfg)
    assert str(e.value).startswith("model.path='someorg/no-such-model': no such folder"), str(e.value)
    assert all(w in str(e.value) for w in MISSING_MODEL), str(e.value)


def test_rlvr_eval_and_merge_say_what_train_says_for_a_missing_model(tmp_path, monkeypatch, capsys, offline):
    from rl.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", "someorg/no-such-model", "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err  # the [precision] line, then the error
    assert e.value.code == 2 and err.splitlines()[-1].startswith("rlvr: --model='someorg/no-such-model': no such "
                                                                 "folder"), err
    assert all(w in err for w in MISSING_MODEL) and "Traceback" not in err and len(err.splitlines()) <= 2, err
    with pytest.raises(SystemExit) as e:
        main(["merge", "runs/bai_actr", "runs/bai_actor2", "--w1", "0.5", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("rlvr: model 1 (instruct)='runs/bai_actr': no such folder"), err
    assert all(w in err for w in MISSING_MODEL), err


def test_a_hub_id_the_hub_does_not_have_is_named(monkeypatch):
    import huggingface_hub

    from rl.data import sources as data_sources

    monkeypatch.setattr(data_sources, "hub_reachable", lambda: True)
    monkeypatch.setattr(huggingface_hub, "repo_exists", lambda repo, **kw: False)
    with pytest.raises(FileNotFoundError, match=r"model.path='runs/typo': no such folder .*the hub has no model"):
        resolve_model_path("runs/typo")
    monkeypatch.setattr(huggingface_hub, "repo_exists", lambda repo, **kw: True)
    assert resolve_model_path("someorg/real-model") == "someorg/real-model"  # the loaders download it


def test_help_lists_every_command_with_a_whole_sentence(capsys):
    from rl.cli import SUMMARIES, main

    with pytest.raises(SystemExit):
        main(["--help"])
    listing = " ".join(capsys.readouterr().out.split())
    for name, summary in SUMMARIES.items():
        assert summary.endswith(".") and f"{name} {summary}" in listing, (name, listing)
    with pytest.raises(SystemExit):
        main(["prepare-model", "--help"])
    assert "Convert an embedded model" in capsys.readouterr().out
