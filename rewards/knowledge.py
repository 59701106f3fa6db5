"""A knowledge source for the factuality rewards (KnowRL, KLCF, an IKEA-style search agent): a passage store with BM25
or dense retrieval, optionally restricted to the pages a data row names.

Passages come from exactly one of
- `knowledge.passages`: a JSONL file of {"title": str, "text": str} rows (other keys are ignored);
- `knowledge.qa_data`: a question-answer data set (a JSON list or JSONL with `question`, `answers` and `title`, the
  last a `;`-separated list of page titles, as in knowrl/train.json). Its passages are derived from
  the data set's own question-answer pairs; no Wikipedia text: each row gives every one of its titles the passage
  "Q: <question> A: <answers>." (`qa_passages`).

Texts longer than `chunk_words` words are split into the fewest near-equal chunks of at most that many words
(whitespace-normalised); every chunk keeps its title and is indexed as "<title>. <text>".
- bm25: bm25s, lower-cased tokens without English stopwords, no stemmer. A title-restricted search scores the query
  against every chunk (a sum over the query terms' posting lists, cheap even for ~100k chunks) and keeps the chunks of
  those titles; chunks with score 0 (no query term in common) are never returned.
- dense: cosine similarity of all-MiniLM-L6-v2 embeddings (rl.models.embeddings.MiniLMEmbedder), chunks embedded once.

Indexes are cached in `<cache_dir>/<retriever>-<sha256>/` (bm25s' files in bm25/, or embeddings.npy), the hash over
the source file's bytes, whether it is a passages or a QA file, chunk_words, the retriever, the embedding model (dense
only) and FORMAT_VERSION. A folder is built under a temporary name in the same parent and renamed into place, so a
crashed build is never read; where the cache cannot be written the index stays in memory (with a warning).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rl.config.rollout import KnowledgeConfig
from rl.data.sources import resolve_data_file
from rl.files import replace_folder_atomic

FORMAT_VERSION = "1"
RETRIEVERS = ("bm25", "dense")


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk: its page title, text, retrieval score and position in the store."""

    title: str
    text: str
    score: float
    index: int


def normalize_title(title: str) -> str:
    """Case-insensitive, stripped, underscores as spaces, whitespace collapsed: "Marie_Curie " == "marie curie"."""
    return " ".join(title.replace("_", " ").split()).casefold()


def chunk_text(text: str, chunk_words: int) -> list[str]:
    """`text` (whitespace-normalised) in the fewest near-equal chunks of at most `chunk_words` words."""
    words = text.split()
    n = max(1, -(-len(words) // chunk_words))
    bounds = [round(i * len(words) / n) for i in range(n + 1)]
    return [" ".join(words[a:b]) for a, b in zip(bounds, bounds[1:])]


def _nonempty_str(x: Any) -> bool:
    return isinstance(x, str) and bool(x.strip())


def qa_passages(rows: Sequence[dict], where: Sequence[str] | None = None) -> list[dict]:
    """Passages {"title", "text"} from question-answer rows: for each of a row's `;`-separated titles (stripped, empty
    ones skipped) the text "Q: <question> A: <answers>." (a list of answers joined with " / "). A row without a
    question, answers or any title raises ValueError naming it (`where[i]`, else rows[i])."""
    out = []
    for i, row in enumerate(rows):
        row = row if isinstance(row, dict) else {}
        answers = row.get("answers")
        answers = [answers] if isinstance(answers, str) else answers
        titles = [t.strip() for t in row["title"].split(";") if t.strip()] if _nonempty_str(row.get("title")) else []
        if not (_nonempty_str(row.get("question")) and isinstance(answers, list) and answers
                and all(map(_nonempty_str, answers)) and titles):
            raise ValueError(f"{where[i] if where else f'rows[{i}]'}: a question-answer row needs a non-empty string "
                             "`question`, `answers` (a string or a list of strings) and `title` (';'-separated page "
                             "titles); fix or remove the row")
        text = f"Q: {row['question'].strip()} A: {' / '.join(a.strip() for a in answers)}."
        out += [{"title": t, "text": text} for t in titles]
    return out


def _check_passages(rows: Sequence[dict], where: Sequence[str] | None = None) -> None:
    """Raise ValueError naming the first row (`where[i]`, else passages[i]) without a non-empty string title and
    text."""
    for i, row in enumerate(rows):
        if not (isinstance(row, dict) and _nonempty_str(row.get("title")) and _nonempty_str(row.get("text"))):
            raise ValueError(f"{where[i] if where else f'passages[{i}]'}: a passage needs non-empty string fields "
                             '"title" and "text", e.g. {"title": "Paris", "text": "Paris is ..."}; fix or remove it')


def _read_rows(path: str, field: str) -> tuple[bytes, list[Any], list[str]]:
    """The file's bytes, its rows (a JSON list, or JSONL with blank lines skipped) and where each row is
    ("file, line 3" for JSONL, "file, item 2 (0-based)" for a JSON list). Unreadable, empty or malformed files raise
    ValueError."""
    fix = f"set {field} to a JSONL file with one JSON object per line"
    path = resolve_data_file(path, field)  # a missing file may be in the data mirror (knowrl/train.json)
    try:
        data = Path(path).expanduser().read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{field}={path!r}: cannot read it as UTF-8 text ({e}); {fix}") from None
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}); fix the file") from None
        where = [f"{path}, item {i} (0-based)" for i in range(len(rows))]
    else:
        rows, where = [], []
        for n, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {n}: not valid JSON ({e.msg}); each line must be one JSON "
                                     "object: fix or remove the line") from None
                where.append(f"{path}, line {n}")
    if not rows:
        raise ValueError(f"{field}={path!r}: the file is empty (no JSON rows); {fix}")
    return data, rows, where


class PassageStore:
    """Chunked passages with a BM25 or dense index; `search` is safe to call from many threads at once."""

    def __init__(self, rows: Sequence[dict], retriever: str = "bm25", chunk_words: int = 120, k: int = 5,
                 embedding_model: str = "all-MiniLM-L6-v2", cache_folder: str | Path | None = None):
        """Chunk `rows` ({"title", "text"} dicts) and index them, loading the index from `cache_folder` when it
        exists there, else building it and saving it there (None: no cache)."""
        if retriever not in RETRIEVERS:
            raise ValueError(f"knowledge.retriever={retriever!r}: choose one of {list(RETRIEVERS)}")
        if chunk_words < 1 or k < 1:
            raise ValueError(f"knowledge.chunk_words={chunk_words}, knowledge.k={k}: both must be at least 1")
        _check_passages(rows)
        self.retriever, self.k = retriever, k
        self.chunks = [(r["title"].strip(), c) for r in rows for c in chunk_text(r["text"], chunk_words)]
        by_title: dict[str, list[int]] = {}
        for i, (title, _) in enumerate(self.chunks):
            by_title.setdefault(normalize_title(title), []).append(i)
        self._by_title = {t: np.array(ix) for t, ix in by_title.items()}  # normalised title -> its chunks
        docs = [f"{title}. {text}" for title, text in self.chunks]
        if retriever == "dense":
            from rl.models.embeddings import MiniLMEmbedder

            self._embed = MiniLMEmbedder(embedding_model, batch_size=64, max_length=256, max_cache=10_000)
            self._embed_lock = threading.Lock()  # the embedder's text cache and the model are not thread safe

        self.from_cache = False
        folder = Path(cache_folder) if cache_folder is not None else None
        if folder is not None and folder.is_dir():
            try:
                self._load(folder)
                self.from_cache = True
            except (OSError, ValueError) as e:
                warnings.warn(f"knowledge cache {folder} is unreadable ({e}); indexing again", stacklevel=2)
        if not self.from_cache:
            self._build(docs)
            if folder is not None:
                self._save_atomic(folder)

    @classmethod
    def from_config(cls, cfg: KnowledgeConfig) -> PassageStore:
        """The store for a `knowledge` config section, its index cached under cfg.cache_dir."""
        if (cfg.passages is None) == (cfg.qa_data is None):
            raise ValueError(f"knowledge.passages={cfg.passages!r}, knowledge.qa_data={cfg.qa_data!r}: set exactly "
                             "one of them (a JSONL of title/text passages, or a question-answer data set)")
        if cfg.passages is not None:
            data, rows, where = _read_rows(cfg.passages, "knowledge.passages")
            _check_passages(rows, where)
            marker = "passages"
        else:
            data, rows, where = _read_rows(cfg.qa_data, "knowledge.qa_data")
            rows = qa_passages(rows, where)
            marker = "qa"
        key = hashlib.sha256()
        dense_model = cfg.embedding_model if cfg.retriever == "dense" else ""
        for part in (FORMAT_VERSION, marker, cfg.retriever, str(cfg.chunk_words), dense_model):
            key.update(part.encode() + b"\0")
        key.update(data)
        if cfg.cache_dir is not None:
            root = Path(cfg.cache_dir).expanduser()
        else:
            from rl.models.resolve import cache_dir

            root = cache_dir() / "knowledge"
        return cls(rows, cfg.retriever, cfg.chunk_words, cfg.k, cfg.embedding_model,
                   root / f"{cfg.retriever}-{key.hexdigest()}")

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def titles(self) -> frozenset[str]:
        """The normalised titles in the store."""
        return frozenset(self._by_title)

    # --- index: build, save, load (per retriever) ---

    def _build(self, docs: list[str]) -> None:
        if self.retriever == "bm25":
            import bm25s

            self._bm25 = bm25s.BM25()
            self._bm25.index(bm25s.tokenize(docs, stopwords="en", show_progress=False), show_progress=False)
        else:
            self._emb = self._embed(docs).astype(np.float32)

    def _save_atomic(self, folder: Path) -> None:
        """Write the index into a temporary folder next to `folder`, then rename it into place; on any OSError
        (an unwritable cache) warn and keep the index in memory only."""
        tmp = None
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
            if self.retriever == "bm25":
                self._bm25.save(tmp / "bm25", show_progress=False)
            else:
                np.save(tmp / "embeddings.npy", self._emb)
            try:
                replace_folder_atomic(tmp, folder, overwrite=False)
            except OSError:
                if not folder.is_dir():  # else another process finished the same index first: keep theirs
                    raise
        except OSError as e:
            warnings.warn(f"cannot write the knowledge cache {folder} ({e}); the index stays in memory only",
                          stacklevel=3)
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _load(self, folder: Path) -> None:
        if self.retriever == "bm25":
            import bm25s

            self._bm25 = bm25s.BM25.load(folder / "bm25", show_progress=False)
            n = self._bm25.scores["num_docs"]
        else:
            self._emb = np.load(folder / "embeddings.npy")
            n = len(self._emb)
        if n != len(self.chunks):
            raise ValueError(f"it holds {n} chunks, not {len(self.chunks)}")

    # --- search ---

    def _scores(self, query: str) -> np.ndarray | None:
        """The query's score for every chunk, or None where no query term is in the index (bm25)."""
        if self.retriever == "bm25":
            import bm25s

            ids = self._bm25.get_tokens_ids(bm25s.tokenize(query, stopwords="en", return_ids=False,
                                                           show_progress=False)[0])
            return self._bm25.get_scores_from_ids(ids) if ids else None
        with self._embed_lock:
            q = self._embed([query])[0]
        return self._emb @ q

    def search(self, query: str, k: int | None = None, titles: Sequence[str] | None = None) -> list[Passage]:
        """The best `k` (default self.k) chunks for `query`, by score descending then index ascending; with `titles`
        only chunks of those titles (normalised; unknown titles contribute nothing). Never raises for odd input: an
        empty query, no matching title or (bm25) no term in common gives []."""
        if not isinstance(query, str) or not query.strip():
            return []
        if titles is None:
            candidates = None
        else:
            found = [self._by_title[t] for t in {normalize_title(t) for t in titles if isinstance(t, str)}
                     if t in self._by_title]
            if not found:
                return []
            candidates = np.unique(np.concatenate(found))
        scores = self._scores(query)
        if scores is None:
            return []
        idx = np.arange(len(scores)) if candidates is None else candidates
        scores = scores[idx]
        if self.retriever == "bm25":
            idx, scores = idx[scores > 0], scores[scores > 0]
        k = self.k if k is None else k
        if len(idx) > k > 0:  # keep the top k and every tie with the k-th, then sort exactly
            keep = scores >= np.partition(scores, len(scores) - k)[len(scores) - k]
            idx, scores = idx[keep], scores[keep]
        order = np.lexsort((idx, -scores))[: max(k, 0)]
        return [Passage(*self.chunks[i], float(s), int(i)) for i, s in zip(idx[order], scores[order])]
