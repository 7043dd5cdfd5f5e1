"""Corpora: text, JSONL and Parquet inputs, deterministic windows, counted replacements and empty documents."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from featuredb.errors import BadInputError
from ingest.corpus import CorpusStats, installed_docs, iter_documents, iter_windows
from tiny_model import make_tiny_llama


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tiny_llama(tmp_path_factory.mktemp("m") / "model"))


def test_text_jsonl_and_parquet_give_the_same_documents(tmp_path: Path) -> None:
    docs = ["the king of France", "rain in Paris", "a football team"]
    (tmp_path / "a.txt").write_text("\n\n".join(docs) + "\n")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    pl.DataFrame({"content": docs}).write_parquet(tmp_path / "a.parquet")
    got = [list(iter_documents(str(tmp_path / "a.txt"), CorpusStats())),
           list(iter_documents(str(tmp_path / "a.jsonl"), CorpusStats(), text_field="body")),
           list(iter_documents(str(tmp_path / "a.parquet"), CorpusStats(), text_column="content"))]
    assert [[d.strip() for d in g] for g in got] == [docs, docs, docs]


def test_undecodable_bytes_are_replaced_and_counted_and_empty_documents_skipped(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "   "}\n{"text": "bad \xff\xfe bytes"}\n')
    stats = CorpusStats()
    docs = list(iter_documents(str(tmp_path / "c.jsonl"), stats))
    assert docs == ["ok", "bad \ufffd\ufffd bytes"]
    assert stats.replaced_bytes == 2 and stats.empty_documents == 1 and stats.documents == 2


def test_bad_corpus_lines_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text('{"text": "a"}\n{"title": "b"}\n')
    with pytest.raises(BadInputError, match=r"c.jsonl:2: no field 'text'"):
        list(iter_documents(str(tmp_path / "c.jsonl"), CorpusStats()))
    pl.DataFrame({"body": ["x"]}).write_parquet(tmp_path / "p.parquet")
    with pytest.raises(BadInputError, match="no column 'text'"):
        list(iter_documents(str(tmp_path / "p.parquet"), CorpusStats()))
    with pytest.raises(BadInputError, match="no such corpus"):
        list(iter_documents(str(tmp_path / "missing"), CorpusStats()))


def test_windows_have_exact_length_bos_first_and_respect_max_tokens(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "t.txt").write_text("\n\n".join("the king of France was in Paris" for _ in range(50)))
    stats = CorpusStats()
    windows = list(iter_windows(iter_documents(str(tmp_path / "t.txt"), stats), tokenizer, 10, 95, stats))
    assert len(windows) == 9 and stats.tokens == 90
    assert all(len(w) == 10 and w[0] == tokenizer.bos_token_id for w in windows)
    again = list(iter_windows(iter_documents(str(tmp_path / "t.txt"), CorpusStats()), tokenizer, 10, 95, CorpusStats()))
    assert again == windows


def test_default_corpus_is_the_installed_packages_documentation() -> None:
    # All of it: which paragraphs come first depends on what else is installed (the ray and s3 extras put
    # thousands of paragraphs before duckdb's in name order).
    paragraphs = list(installed_docs())
    assert len(paragraphs) > 100
    assert any("DuckDB" in p or "duckdb" in p for p in paragraphs)


def test_train_reads_a_parquet_column_as_ingest_does(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """train's windows (held-out ones too) come from the --text-column of a Parquet corpus, as ingest's do."""
    from ingest.training_data import assigned_windows

    texts = [f"document {i} about rivers, bridges and the towns beside them." * 3 for i in range(60)]
    pl.DataFrame({"body": texts}).write_parquet(tmp_path / "c.parquet")
    corpus = str(tmp_path / "c.parquet")
    got = list(assigned_windows(tokenizer, corpus, text_field="text", text_column="body", ctx_len=16,
                                train_tokens=300, test_tokens=60))
    ingest_windows = list(iter_windows(iter_documents(corpus, CorpusStats(), text_column="body"), tokenizer, 16,
                                       None, CorpusStats()))
    windows = [w for w, _ in got]
    assert windows[:10] == ingest_windows[:10] and any(held for _, held in got)
    assert {tuple(w) for w in windows} <= {tuple(w) for w in ingest_windows}
    with pytest.raises(BadInputError, match="body|text"):  # the default column is not there: a named error
        list(assigned_windows(tokenizer, corpus, text_field="text", ctx_len=16, train_tokens=300, test_tokens=60))
