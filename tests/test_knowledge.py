"""The knowledge source (rewards/knowledge.py): BM25 and dense search, title restriction, chunking, the index cache,
bad input, passages derived from a QA data set, thread safety.

tests/data/knowledge_fixture.jsonl was written by hand for these tests: 20 short passages of stable, well-known facts
(Paris, Mount Everest, Marie Curie, ...); three of them (Python, Marie Curie, Olympic Games) have several paragraphs
and more than 120 words, to be chunked.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rewards.knowledge import Passage, PassageStore, qa_passages
from rl.config.rollout import KnowledgeConfig
from tests.conftest import SHARED_DATA, requires_mirror

FIXTURE = Path(__file__).parent / "data" / "knowledge_fixture.jsonl"
KNOWRL = SHARED_DATA / "knowrl" / "train.json"


def _store(tmp_path, source=FIXTURE, **kw) -> PassageStore:
    """A store over a copy of `source` (so tests can edit it), cached under tmp_path/cache."""
    path = tmp_path / Path(source).name
    if not path.exists():
        tmp_path.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, path)
    field = "qa_data" if path.suffix == ".json" else "passages"
    return PassageStore.from_config(KnowledgeConfig(**{field: str(path)}, cache_dir=str(tmp_path / "cache"), **kw))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> PassageStore:
    return _store(tmp_path_factory.mktemp("knowledge"))


@pytest.mark.parametrize("query, title", [
    ("What is the capital of France?", "Paris"),
    ("highest mountain on Earth", "Mount Everest"),
    ("Who discovered polonium and radium?", "Marie Curie"),
    ("chemical formula H2O", "Water"),
    ("first people to walk on the Moon Apollo 11", "Moon"),
    ("double helix genetic instructions", "DNA"),
])
def test_bm25_finds_the_right_passage(store, query, title):
    hits = store.search(query)
    assert hits and hits[0].title == title
    assert all(isinstance(h, Passage) for h in hits) and len(hits) <= store.k
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True) and hits[-1].score > 0


def test_title_restriction(store):
    hits = store.search("capital city", k=10, titles=["Tokyo", "Paris"])
    assert {h.title for h in hits} == {"Tokyo", "Paris"}
    # normalisation: case, underscores, extra whitespace
    assert [h.index for h in store.search("Nobel Prize", titles=[" marie_CURIE  "])] == \
           [h.index for h in store.search("Nobel Prize", titles=["Marie Curie"])]
    assert {h.title for h in store.search("Nobel Prize", titles=["marie_curie"])} == {"Marie Curie"}
    assert store.search("Nobel Prize", titles=["Albert_Einstein", "No Such Page"])[0].title == "Albert Einstein"
    assert store.search("Nobel Prize", titles=["No Such Page"]) == []
    assert store.search("Nobel Prize", titles=[]) == []
    assert store.search("Nobel Prize", titles=["Paris"]) == []  # no term in common: nothing, not a 0-score passage
    assert "marie curie" in store.titles and "python (programming language)" in store.titles


def test_empty_query_and_unknown_words(store):
    assert store.search("") == [] and store.search("   \n") == [] and store.search("the of and") == []
    assert store.search("xyzzyqwerty") == []
    assert store.search("Paris", k=0) == []


def test_chunking(tmp_path):
    store = _store(tmp_path, chunk_words=50)
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    long = next(r for r in rows if r["title"] == "Olympic Games")
    chunks = [text for title, text in store.chunks if title == "Olympic Games"]
    assert len(chunks) == -(-len(long["text"].split()) // 50) >= 4
    assert all(len(c.split()) <= 50 for c in chunks)
    assert " ".join(chunks) == " ".join(long["text"].split())  # nothing lost, in order
    assert len(store) == sum(-(-len(r["text"].split()) // 50) for r in rows)
    hit = store.search("Olympic flame torch relay", titles=["Olympic Games"])[0]
    assert hit.title == "Olympic Games" and "torch relay" in hit.text
    assert len(_store(tmp_path / "default")) == len(rows) + 3  # 120 words: the three long passages in two chunks


def test_cache_reused_rebuilt_and_atomic(tmp_path, monkeypatch):
    first = _store(tmp_path)
    assert not first.from_cache
    cache = tmp_path / "cache"
    assert len(list(cache.iterdir())) == 1 and next(cache.iterdir()).name.startswith("bm25-")  # no temporary left
    monkeypatch.setattr(PassageStore, "_build", lambda *a: pytest.fail("indexed again"))
    second = _store(tmp_path)
    assert second.from_cache and second.search("capital of France") == first.search("capital of France")
    monkeypatch.undo()

    with open(tmp_path / FIXTURE.name, "a") as f:  # a changed file is indexed again, into a new folder
        f.write(json.dumps({"title": "Canberra", "text": "Canberra is the capital city of Australia."}) + "\n")
    third = _store(tmp_path)
    assert not third.from_cache and third.search("capital of Australia")[0].title == "Canberra"
    assert len(list(cache.iterdir())) == 2
    assert not _store(tmp_path, chunk_words=60).from_cache  # and so are other settings


def test_a_failed_cache_write_leaves_nothing(tmp_path, monkeypatch):
    import bm25s

    def save_then_fail(self, folder, **kw):
        Path(folder).mkdir()
        (Path(folder) / "half.npy").write_bytes(b"...")
        raise OSError("disk full")

    monkeypatch.setattr(bm25s.BM25, "save", save_then_fail)
    with pytest.warns(UserWarning, match="disk full"):
        assert _store(tmp_path).search("capital of France")[0].title == "Paris"
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    assert not _store(tmp_path).from_cache and _store(tmp_path).from_cache


def test_unwritable_cache_falls_back_to_memory(tmp_path):
    (tmp_path / "a_file").write_text("")
    path = shutil.copy(FIXTURE, tmp_path / "p.jsonl")
    with pytest.warns(UserWarning, match="stays in memory"):
        store = PassageStore.from_config(KnowledgeConfig(passages=str(path), cache_dir=str(tmp_path / "a_file")))
    assert store.search("capital of France")[0].title == "Paris"


@pytest.mark.parametrize("content, message", [
    ('{"title": "Paris", "text": "Paris is in France."}\n{"text": "no title"}\n', r"line 2: .*\"title\" and \"text\""),
    ('{"title": "Paris", "text": "Paris is in France."}\n\n{"title": "x", "text": "  "}\n', r"line 3: .*fix or remove"),
    ('{"title": "Paris", "text": "Paris is in France."}\n{"title": "x", "text": \n', r"line 2: not valid JSON"),
    ('["title", "text"]\n', r"item 0 \(0-based\)"),
    ("", "is empty"),
    ("\n  \n", "is empty"),
])
def test_bad_passages_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as e:
        PassageStore.from_config(KnowledgeConfig(passages=str(path), cache_dir=str(tmp_path / "cache")))
    assert str(path) in str(e.value) and not (tmp_path / "cache").exists()  # raised before indexing


def test_bad_config(tmp_path):
    with pytest.raises(ValueError, match=r"knowledge.passages='.*missing.jsonl'.*cannot read"):
        PassageStore.from_config(KnowledgeConfig(passages=str(tmp_path / "missing.jsonl")))
    with pytest.raises(ValueError, match="knowledge.passages.*knowledge.qa_data.*exactly one"):
        PassageStore.from_config(KnowledgeConfig())
    with pytest.raises(ValueError, match="knowledge.passages.*knowledge.qa_data.*exactly one"):
        PassageStore.from_config(KnowledgeConfig(passages=str(FIXTURE), qa_data=str(KNOWRL)))
    with pytest.raises(ValueError, match=r"knowledge.retriever='tfidf'.*\['bm25', 'dense'\]"):
        PassageStore.from_config(KnowledgeConfig(passages=str(FIXTURE), retriever="tfidf",
                                                 cache_dir=str(tmp_path)))


@requires_mirror("knowrl/train.json")
def test_qa_passages_from_knowrl(tmp_path):
    rows = json.loads(KNOWRL.read_text())
    passages = qa_passages(rows[:3])
    titles = [t.strip() for t in rows[0]["title"].split(";")]
    assert [p["title"] for p in passages[:len(titles)]] == titles  # every title of the row gets the passage
    assert passages[0]["text"] == "Q: How many seasons of Hinterland are on Netflix? A: three seasons."
    assert len(passages) == sum(len(r["title"].split(";")) for r in rows[:3])
    assert qa_passages([{"question": "Q?", "answers": ["a", "b"], "title": "X; ;Y"}]) == [
        {"title": "X", "text": "Q: Q? A: a / b."}, {"title": "Y", "text": "Q: Q? A: a / b."}]
    with pytest.raises(ValueError, match=r"rows\[1\]: .*`question`"):
        qa_passages([rows[0], {"question": "Q?", "title": "X"}])

    store = _store(tmp_path, source=KNOWRL)  # the whole data set (~15k passages)
    for row in rows[:40:8]:
        hit = store.search(row["question"], titles=row["title"].split(";"))[0]
        assert hit.text.startswith(f"Q: {row['question']} A: {row['answers']}")
        assert hit.title in row["title"].split(";")


def test_bad_qa_data_names_file_and_item(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps([{"question": "Q?", "answers": "A", "title": "T"}, {"question": "Q?", "answers": ""}]))
    with pytest.raises(ValueError, match=r"qa.json, item 1 \(0-based\): a question-answer row"):
        PassageStore.from_config(KnowledgeConfig(qa_data=str(path), cache_dir=str(tmp_path)))


def test_concurrent_searches_match_serial(store):
    queries = [("capital of France", None), ("Nobel Prize physics", None), ("Nobel Prize", ["Marie Curie"]),
               ("largest planet gas giant", None), ("Olympic rings", ["olympic_games", "Tokyo"]), ("", None)] * 8
    serial = [store.search(q, titles=t) for q, t in queries]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda qt: store.search(qt[0], titles=qt[1]), queries)) == serial


def test_dense_finds_a_paraphrase(tmp_path):
    store = _store(tmp_path, retriever="dense")
    hits = store.search("Which insects live in hives ruled by a queen and make a sweet food?", k=3)
    assert hits[0].title == "Honey bee" and len(hits) == 3
    assert store.search("tallest peak in the world", titles=["Mount Everest", "Mount Kilimanjaro"])[0].title == \
           "Mount Everest"
    assert _store(tmp_path, retriever="dense").from_cache
