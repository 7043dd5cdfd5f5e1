"""Baseline labels a person would write: named artefact peaks, logits only for a real effect, "after X" context."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from featuredb import FeatureStore
from featuredb.labels.baseline import BASELINE_TYPE, _kind_sql, compute_labels, label_features, says, token_kind

M, S = "m", "3-tc"
# A feature's logit histogram: a standard normal bulk over ~50k tokens (mean 0, spread 1).
BARS = np.linspace(-5, 5, 32)
HEIGHTS = (50_000 * np.exp(-BARS ** 2 / 2) / np.exp(-BARS ** 2 / 2).sum()).round()
NOISE = ([" emetery", " strugg", " policym", " ban"], [6.3, 4.4, 4.3, 4.2])  # one outlier: the largest of 50k draws
REAL = ([" only", "only", " Only", " just", " merely"], [9.0, 8.2, 7.9, 6.5, 5.5])


def _feature(index: int, peaks: list[tuple[str, ...]], logits: tuple[list[str], list[float]] = NOISE) -> tuple:
    """(feature row, activation rows): one top example per ([first,] previous, peak, next) tokens; the first
    token is " In" unless given."""
    pos, vals = logits
    feature = {"modelId": M, "layer": S, "index": index, "pos_str": pos, "pos_values": vals,
               "neg_str": [" x"] * 4, "neg_values": [-4.5, -4.4, -4.3, -4.2],
               "logits_hist_data_bar_values": BARS.tolist(), "logits_hist_data_bar_heights": HEIGHTS.tolist()}
    acts = [{"modelId": M, "layer": S, "index": index, "tokens": [*([" In"] if len(t) == 3 else []), *t, " today"],
             "values": [0.0, 0.1, 5.0 - 0.1 * k, 0.2, 0.0], "maxValue": 5.0 - 0.1 * k, "maxValueTokenIndex": 2,
             "binMin": -1.0, "dataIndex": str(k)} for k, t in enumerate(peaks)]
    return feature, acts


FEATURES = {
    0: _feature(0, [(" a", "<|im_end|>", "Hello")] * 4),
    1: _feature(1, [(" the", "<unk>", ",")] * 3 + [(" a", "<unk>", ".")]),
    2: _feature(2, [(" x", ",", " and"), (" y", ".", " The"), ("z", ";", " but"), (" w", ",", " so")]),
    3: _feature(3, [(" end", "\n", "#"), (".", "\n", "The"), (")", "\n\n", "if"), ("!", "\n", "-")]),
    4: _feature(4, [(" the", " Texas", ","), (" the", " Dallas", " is"), (" the", " Houston", "."),
                    (" the", " Austin", " was")]),
    5: _feature(5, [(" not", " the", " a"), (" and", " a", " the"), ("\n", " is", " it"), (" so", ",", " x")],
                REAL),
    6: _feature(6, [(" a", ",", " b"), (" c", " Paris", " d"), (" e", ".", " f"), (" g", ";", " h")]),
    7: _feature(7, [(" call", " un", "wra", "p"), (" then", " un", "wra", "pped"), (" to", " un", "wra", "p"),
                    (" a", " rap", "wra", " x")]),  # "wra" is a piece of "unwrap"
    8: _feature(8, [(" Texas", " the", " capital", " is"), (" Texas", " its", " governor", " was"),
                    (" Texas", " a", " city", ","), (" Ohio", " my", " house", ".")]),  # about Texas
    9: _feature(9, [(" Once", " the", " red", " car"), (" Then", " the", " big", " dog"),
                    (" So", " the", " old", " man"), (" If", " a", " new", " day")]),  # only " the" is shared
}


@pytest.fixture
def labels(tmp_path: Path) -> dict[int, str]:
    path = tmp_path / "labels.duckdb"
    with FeatureStore(path) as store:
        store.upsert({"features": pl.DataFrame([f for f, _ in FEATURES.values()]),
                      "activations": pl.DataFrame([a for _, acts in FEATURES.values() for a in acts])})
        summary = label_features(store, model=M)
        assert summary.labelled == len(FEATURES)
        rows = store.con.execute('SELECT "index", description FROM explanations WHERE "typeName" = ?',
                                 [BASELINE_TYPE]).fetchall()
        assert sorted(r[:3] for r in compute_labels(store.con, M)) == sorted((M, S, i) for i in FEATURES)
    return {int(i): d for i, d in rows}


def test_artefact_only_features_get_a_named_label(labels: dict[int, str]) -> None:
    assert labels[0].startswith("end of turn (<|im_end|>)")
    assert labels[1].startswith("<unk> (unknown word)")
    assert labels[2].startswith('punctuation "," "." ";"')
    assert labels[3].startswith("line breaks")
    assert "emetery" not in labels[0] and "<|im_end|>\"" not in labels[0]


def test_artefact_peaks_are_skipped_when_content_peaks_exist(labels: dict[int, str]) -> None:
    assert labels[6].startswith('"Paris"'), labels[6]  # one example in four is content: enough to name it


def test_noise_logits_are_not_named(labels: dict[int, str]) -> None:
    assert all("→ says" not in labels[i] for i in (0, 1, 2, 3, 4, 6)), labels
    assert says(*NOISE, [-4.5], 0.0, 1.0) == []


def test_a_real_logit_effect_is_named_once_per_word(labels: dict[int, str]) -> None:
    assert labels[5].endswith('→ says "only", "just"'), labels[5]
    assert says(*REAL, [-4.5], 0.0, 1.0, generic=frozenset({" only", "only", " Only"})) == []  # generic tokens


def test_a_shared_previous_token_is_named_when_peaks_vary(labels: dict[int, str]) -> None:
    assert labels[9].startswith('"red"/"big"/"old" after "the"'), labels[9]


def test_a_shared_phrase_before_the_peak_is_named_whole(labels: dict[int, str]) -> None:
    assert labels[4].startswith('"Texas"/"Dallas"/"Houston" after "In the"'), labels[4]


def test_word_piece_peaks_name_the_word_they_are_part_of(labels: dict[int, str]) -> None:
    assert labels[7].startswith('"wra" in "unwrap" after "un"'), labels[7]
    assert "unwrapped" not in labels[7]  # in one example of four: not enough
    assert '"Texas"' not in labels[7] and "in " not in labels[4]  # whole-word peaks get no "in"


def test_context_words_that_set_a_feature_apart_are_named(labels: dict[int, str]) -> None:
    assert labels[8].endswith("(context: texas)"), labels[8]
    assert "context" not in labels[9] and "ohio" not in labels[8]  # one example in four is not enough


def test_without_a_histogram_the_spread_comes_from_the_tenth_logits() -> None:
    toks = [" only", "only", " Only", " just", " merely", " a", " b", " c", " d", " e"]
    strong = [9.0, 8.5, 8.0, 7.5, 7.0, 3.9, 3.8, 3.8, 3.7, 3.7]
    assert says(toks, strong, [-3.7] * 10, None, None) == [" only", " just"]
    assert says(toks, [4.5, 4.2] + [3.7] * 8, [-3.7] * 10, None, None) == []


TOKENS = ["<|im_end|>", "<unk>", "<s>", "<filename>", "\ufffd", " \ufffd\ufffd", "\n", "  ", "\u00a0", ",", " ...",
          "://", "€", " the", "ype", "2", " É", "<", "<a b>", "", " (x)"]


def test_sql_and_python_token_kinds_agree() -> None:
    con = duckdb.connect()
    got = [r[0] for r in con.execute(f"SELECT {_kind_sql('t', 'NULL')} FROM unnest(?) AS u(t)", [TOKENS]).fetchall()]
    assert got == [token_kind(t) for t in TOKENS]
    assert got[:4] == ["special", "special", "start", "special"] and token_kind(" the", position=0) == "start"
