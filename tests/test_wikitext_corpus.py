"""`wikitext:PATH` corpora read as natural text: articles, undone spacing, no `<unk>`."""

from __future__ import annotations

from pathlib import Path

import pytest

from featuredb.errors import BadInputError
from ingest.corpus import CorpusStats, iter_documents
from ingest.wikitext import detokenize, wikitext_articles

SHARED_WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "wikitext-2"

SAMPLE = """ 
 = Dallas = 
 
 Dallas is a city in the U.S. state of Texas , and the county seat of Dallas County . Its population was 1 @,@ 197 @,@ 816 in 2010 . 
 The city 's economy is based on banking , commerce , <unk> and energy . It lies 3 @.@ 5 km ( 2 mi ) east of the river . 
 
 = = History = = 
 
 The area was settled in the mid @-@ 19th century by " pioneers " from Tennessee . 
 
 = Austin , Texas = 
 
 Austin is the capital of Texas . 
"""


def test_detokenize_undoes_wikitext_spacing() -> None:
    assert detokenize(" Dallas , Texas . ") == "Dallas, Texas."
    assert detokenize("1 @,@ 197 @,@ 816 in 3 @.@ 5 km ( 2 mi ) , mid @-@ 19th") == \
        "1,197,816 in 3.5 km (2 mi), mid-19th"
    assert detokenize('The city \'s " pioneers " don \'t') == 'The city\'s "pioneers" don\'t'


def test_articles_split_on_titles_and_drop_unk_sentences(tmp_path: Path) -> None:
    f = tmp_path / "valid.txt"
    f.write_text(SAMPLE, encoding="utf-8")
    articles = list(wikitext_articles(f))
    assert len(articles) == 2
    dallas, austin = articles
    assert dallas.startswith("Dallas\n\nDallas is a city in the U.S. state of Texas, and the county seat")
    assert "1,197,816 in 2010." in dallas
    assert "<unk>" not in dallas and "banking" not in dallas  # the sentence with <unk> is dropped
    assert "It lies 3.5 km (2 mi) east of the river." in dallas
    assert "\n\nHistory\n\n" in dallas and "mid-19th century by \"pioneers\" from Tennessee." in dallas
    assert austin == "Austin, Texas\n\nAustin is the capital of Texas."


def test_wikitext_corpus_spec_reads_through_iter_documents(tmp_path: Path) -> None:
    (tmp_path / "test.txt").write_text(SAMPLE, encoding="utf-8")
    stats = CorpusStats()
    docs = list(iter_documents(f"wikitext:{tmp_path}", stats))
    assert stats.documents == 2 and docs[1].startswith("Austin, Texas")


def test_missing_wikitext_path_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no such WikiText file or folder"):
        list(iter_documents(f"wikitext:{tmp_path / 'nope'}", CorpusStats()))
    with pytest.raises(BadInputError, match="no WikiText .txt or .tokens files"):
        list(iter_documents(f"wikitext:{tmp_path}", CorpusStats()))


@pytest.mark.skipif(not SHARED_WIKITEXT.exists(), reason="../shared/corpus/wikitext-2 is not beside the checkout")
def test_real_wikitext_2_reads_clean() -> None:
    articles = list(wikitext_articles(SHARED_WIKITEXT))
    assert len(articles) > 100
    text = "\n".join(articles)
    assert "<unk>" not in text and " @-@ " not in text and " , " not in text


def test_the_demo_reads_wikitext_where_a_copy_is_at_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ingest.demo as demo
    from featuredb.errors import FeatureDBError

    monkeypatch.delenv("FEATUREDB_WIKITEXT", raising=False)
    monkeypatch.setattr(demo, "SHARED_WIKITEXT", tmp_path / "absent")
    assert demo.demo_corpus() == "installed-docs"
    with pytest.raises(FeatureDBError, match="no WikiText-2 copy"):
        demo.demo_corpus("wikitext")
    (tmp_path / "wt").mkdir()
    (tmp_path / "wt" / "valid.txt").write_text(SAMPLE, encoding="utf-8")
    monkeypatch.setenv("FEATUREDB_WIKITEXT", str(tmp_path / "wt"))
    assert demo.demo_corpus() == f"wikitext:{tmp_path / 'wt'}" == demo.demo_corpus("wikitext")
    assert demo.demo_corpus("installed-docs") == "installed-docs"
    assert demo.demo_corpus("my/corpus.jsonl") == "my/corpus.jsonl"
