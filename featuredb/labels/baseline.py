"""Baseline labels from a feature's own records: its peak tokens, their context, and its output logits.

For example `"Texas"/"Dallas" after "the" → says "Austin"`: written as explanations of type
`featuredb-baseline` (label_rule.BASELINE_TYPE), so search and graphs have a label before any
LLM-written explanation exists. One SQL pass over the top examples (activations with binMin -1)
gathers, per feature, the peak tokens, the token before and after each peak, and the logit statistics.

Peak tokens. Special tokens (`<unk>`, `<|im_end|>`, `<|endoftext|>`, any `<…>`/`<|…|>` token),
start-of-text peaks (position 0, `<s>`, `<bos>`), byte fragments (`�`) and pure punctuation or
whitespace are artefacts: they are left out when content peaks make up at least CONTENT_SHARE of
the top examples. A feature whose peaks are (mostly) such tokens gets a named label instead of raw
tokens: "line breaks", "whitespace / indentation", `punctuation "." ","`, "start of text",
"<unk> (unknown word)", "end of turn (<|im_end|>)", "end of text (<|endoftext|>)", "special token
<x>", "byte fragments (�, emoji / non-Latin text)".

Context. `after X/Y` names up to MAX_CONTEXT previous tokens and `before X/Y` next tokens, each shared
by at least CONTEXT_SHARE (10%) of the top examples and by two of them ("after "the"" when the peaks
vary but the token before them agrees); when a longer phrase (up to MAX_PHRASE tokens) right before the
peak is shared as widely, it is named instead (`after "capital of"`). Byte fragments are never named as
context. Word-piece peaks also name the whole words they are part of (`"wra" in "unwrap"`, when
WORD_SHARE of the top examples and two agree), and `(context: texas, governor)` names up to MAX_TOPIC
words of the CONTEXT_BEFORE tokens before the peak that at least TOPIC_SHARE of the top examples have
and that are TOPIC_LIFT times rarer before other features' peaks (what the text is about). On the
demo store these three raised the embedding score of the labels by about 0.05.

Output logits (`→ says X`) only when the effect is real. On the 30-layer demo store (SmolLM2-135M,
61,440 features) the z-score of a feature's top logit against its own logit distribution (mean and
spread from logits_hist_data_bar_*) is about 4.7 in every layer, what the largest of ~49k Gaussian
draws gives; z ≥ 6 alone still admits early-layer noise, typically one outlier token such as
"emetery" or a word piece (" strugg", "MetaInfo", "<filename>") that tops the logits of hundreds of
features. The rule:
  1. drop generic logit tokens: those in the top 10 of at least GENERIC_SHARE (1%) of the model's
     features (and at least GENERIC_MIN of them), and artefact tokens;
  2. the effect is real when the mean z of the three strongest remaining tokens is ≥ Z_EFFECT (6.0):
     several tokens stand well above the distribution (" only"/"only"/" Only" at z 8.5/6.6/5.9),
     not one outlier;
  3. name up to MAX_LOGITS distinct words (case and leading space folded) with z ≥ Z_SHOW (5.0).
On the demo store 0.03% of the features of layers 0-9, 0.08% of layers 10-19 and 1% of layers 20-29
pass (the old labels named two logits for every feature); 62 tokens are generic there. Without a
histogram the mean and spread are estimated from the 10th-strongest positive and negative logits
(≈ mean ± 3.7 spread in a Gaussian bulk of a ~50k-token vocabulary).
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from featuredb.errors import NotFoundError
from featuredb.sql_literals import sql_string
from featuredb.labels.label_rule import BASELINE_TYPE
from featuredb.store.label_tables import (
    BaselineEvidenceLimits,
    baseline_evidence_rows,
    generic_logit_tokens_by_model,
    replace_labels_of_type,
)
from featuredb.store.reads import Scope, has_features

if TYPE_CHECKING:
    import duckdb

    from featuredb.store.feature_store import FeatureStore

MAX_PEAKS = 3
MAX_LOGITS = 2
CONTEXT_SHARE = 0.1  # a previous/next token is named when at least this share of the top examples (and two) have it
MAX_CONTEXT = 2
CONTENT_SHARE = 0.25  # content peaks are named when they make up at least this share of the top examples
MAX_PHRASE = 4  # a shared phrase before the peak is named with up to this many tokens
WORD_SHARE = 0.1  # a whole word around word-piece peaks is named when this share of the top examples (and two) have it
MAX_WORDS = 3
CONTEXT_BEFORE = 10  # context words are looked for in this many tokens before the peak
TOPIC_SHARE = 0.2  # a context word is named when this share of the top examples (and two) have it
TOPIC_LIFT = 5.0  # ... and it is this many times more common there than before other features' peaks
MAX_TOPIC = 3
GENERIC_SHARE = 0.01
GENERIC_MIN = 20
Z_EFFECT = 6.0
Z_SHOW = 5.0
N_EFFECT = 3  # tokens whose mean z must reach Z_EFFECT
TAIL_Z = 3.7  # z of the 10th-largest of ~50k Gaussian draws (estimate without a histogram)

# Token kinds (SQL and Python agree): special, start, bytes, space, punct, or content.
# Whitespace is \t \n \v \f \r and Unicode category Z; punctuation and symbols are categories P and S.
_SPECIAL_RE = r"^<\|?[A-Za-z0-9_./-]+\|?>$"
_START = ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "<|start|>", "<BOS>")
_SPACE_RE = r"^[\t\n\v\f\r\p{Z}]+$"
_PUNCT_RE = r"^[\t\n\v\f\r\p{Z}\p{P}\p{S}]+$"
_SPACE_CHARS = set("\t\n\v\f\r")


def _is_space(c: str) -> bool:
    return c in _SPACE_CHARS or unicodedata.category(c)[0] == "Z"


def token_kind(token: str | None, position: int | None = None) -> str:
    """'start', 'special', 'bytes', 'space', 'punct' or 'content' (the same as the SQL classification)."""
    return "start" if position == 0 else _kind(token)


@lru_cache(maxsize=1 << 16)
def _kind(token: str | None) -> str:
    if token is None or token == "":
        return "space"
    if token in _START:
        return "start"
    if re.match(_SPECIAL_RE, token):
        return "special"
    if "\ufffd" in token:
        return "bytes"
    if all(_is_space(c) for c in token):
        return "space"
    if all(_is_space(c) or unicodedata.category(c)[0] in "PS" for c in token):
        return "punct"
    return "content"


def _kind_sql(tok: str, pos: str) -> str:
    starts = ", ".join(sql_string(s) for s in _START)
    return f"""CASE WHEN {pos} = 0 THEN 'start'
        WHEN NOT starts_with({tok}, '<') AND NOT contains({tok}, '\ufffd')
             AND regexp_matches({tok}, '[\\p{{L}}\\p{{N}}]')
            THEN 'content'
        WHEN coalesce({tok}, '') = '' THEN 'space'
        WHEN {tok} IN ({starts}) THEN 'start'
        WHEN regexp_matches({tok}, '{_SPECIAL_RE}') THEN 'special'
        WHEN contains({tok}, '\ufffd') THEN 'bytes'
        WHEN regexp_matches({tok}, '{_SPACE_RE}') THEN 'space'
        WHEN regexp_matches({tok}, '{_PUNCT_RE}') THEN 'punct' ELSE 'content' END"""


@dataclass
class BaselineSummary:
    """What `featuredb label features` wrote."""

    labelled: int
    unlabelled: int  # features with neither examples nor logits (dead features)


def _show(token: str) -> str:
    shown = token.strip()
    if not shown:
        shown = token.encode("unicode_escape").decode() or "∅"
    return '"' + shown.replace('"', "'") + '"'


def _tokens(tokens: str | list[str] | None) -> list[str]:
    return [tokens] if isinstance(tokens, str) else list(tokens or [])


def describe(peaks: list[str], next_token: str | list[str] | None, logits: list[str],
             prev_token: str | list[str] | None = None, words: list[str] | None = None,
             topic: list[str] | None = None) -> str | None:
    """The label text from peak tokens, the words they are pieces of, common previous/next tokens (or a shared
    phrase), distinctive context words and top logits; None when there is nothing."""
    parts = []
    if peaks:
        parts.append("/".join(_show(t) for t in peaks))
        if words:
            parts.append("in " + "/".join(_show(t) for t in words))
        if _tokens(prev_token):
            parts.append("after " + "/".join(_show(t) for t in _tokens(prev_token)))
        if _tokens(next_token):
            parts.append("before " + "/".join(_show(t) for t in _tokens(next_token)))
        if topic:
            parts.append("(context: " + ", ".join(topic) + ")")
    if logits:
        parts.append("→ says " + ", ".join(_show(t) for t in logits))
    return " ".join(parts) if parts else None


_SPECIAL_NAMES = {"<unk>": "<unk> (unknown word)", "<|im_end|>": "end of turn (<|im_end|>)",
                  "<|im_start|>": "start of a turn (<|im_start|>)", "<|endoftext|>": "end of text (<|endoftext|>)",
                  "</s>": "end of text (</s>)", "<eos>": "end of text (<eos>)", "<pad>": "padding (<pad>)"}


def artefact_name(kind: str, tokens: list[str]) -> str:
    """A person's name for peaks that are all artefacts of one kind (tokens: those peaks, most common first)."""
    if kind == "start":
        return "start of text"
    if kind == "special":
        tok = tokens[0].strip() if tokens else ""
        return _SPECIAL_NAMES.get(tok, f"special token {tok}".strip())
    if kind == "bytes":
        return "byte fragments (�, emoji / non-Latin text)"
    if kind == "space":
        if tokens and all(set(t) <= {"\n", "\r"} for t in tokens):
            return "line breaks"
        return "whitespace / indentation"
    shown = list(dict.fromkeys(t.strip() for t in tokens if t.strip()))[:MAX_PEAKS]
    return "punctuation " + " ".join(_show(t) for t in shown) if shown else "punctuation"


def _context(tokens: list[dict] | None, n: int | None) -> list[str]:
    """The context tokens to name: each in at least CONTEXT_SHARE of the n top examples (and two of them)."""
    if not tokens or not n:
        return []
    return list(dict.fromkeys(t["t"] for t in tokens if t["c"] >= max(2, CONTEXT_SHARE * n) and
                              token_kind(t["t"]) != "bytes"))


def _z_params(mu: float | None, sd: float | None, pos_values: list[float],
              neg_values: list[float]) -> tuple[float, float] | None:
    if mu is not None and sd is not None and sd > 0 and math.isfinite(mu) and math.isfinite(sd):
        return mu, sd
    if pos_values and neg_values:  # no histogram: the 10th extremes sit near mean ± TAIL_Z spread
        hi, lo = pos_values[-1], neg_values[-1]
        if hi is not None and lo is not None and hi > lo:
            return (hi + lo) / 2, (hi - lo) / (2 * TAIL_Z)
    return None


def says(pos_str: list[str] | None, pos_values: list[float] | None, neg_values: list[float] | None,
         mu: float | None, sd: float | None, generic: frozenset[str] = frozenset()) -> list[str]:
    """The output words to name after "→ says" (empty unless the logit effect is real: module docstring)."""
    params = _z_params(mu, sd, list(pos_values or []), list(neg_values or []))
    if params is None or not pos_str or not pos_values:
        return []
    m, s = params
    kept = [(t, (v - m) / s) for t, v in zip(pos_str, pos_values)
            if t is not None and v is not None and t not in generic and token_kind(t) == "content"]
    top = [z for _, z in kept[:N_EFFECT]]
    if len(top) < N_EFFECT or sum(top) / N_EFFECT < Z_EFFECT:
        return []
    words: dict[str, str] = {}
    for t, z in kept:
        if z < Z_SHOW or len(words) >= MAX_LOGITS:
            break
        words.setdefault(t.strip().lower(), t)
    return list(words.values())


def generic_logit_tokens(con: duckdb.DuckDBPyConnection, model: str | None) -> dict[str, frozenset[str]]:
    """modelId -> tokens in the top-10 positive logits of at least GENERIC_SHARE of the model's features."""
    return {m: frozenset(toks) for m, toks in
            generic_logit_tokens_by_model(con, Scope(model), GENERIC_MIN, GENERIC_SHARE).items()}


EVIDENCE_LIMITS = BaselineEvidenceLimits(
    max_peaks=MAX_PEAKS, max_context=MAX_CONTEXT, max_phrase=MAX_PHRASE, max_words=MAX_WORDS, max_topic=MAX_TOPIC,
    context_before=CONTEXT_BEFORE, context_share=CONTEXT_SHARE, word_share=WORD_SHARE, topic_share=TOPIC_SHARE,
    topic_lift=TOPIC_LIFT, z_effect=Z_EFFECT)


def _rows(con: duckdb.DuckDBPyConnection, model: str | None, source: str | None) -> list[tuple]:
    return baseline_evidence_rows(con, Scope(model, source), EVIDENCE_LIMITS,
                                  _kind_sql("peak", "CASE WHEN at_start THEN 0 END"))


def _spread(mu: float | None, m2: float | None) -> float | None:
    if mu is None or m2 is None or m2 - mu * mu <= 0:
        return None
    return math.sqrt(m2 - mu * mu)


def _phrase(tokens: list[str] | None) -> list[str]:
    """A shared phrase's tokens as one piece of text (whitespace collapsed), or nothing."""
    text = " ".join("".join(tokens or []).split())
    return [text] if text else []


def _topic(words: list[str] | None, named: str) -> list[str]:
    """Context words not already in the label."""
    low = named.lower()
    return [w for w in words or [] if w not in low]


def feature_label(row: tuple, generic: frozenset[str] = frozenset()) -> str | None:
    """The baseline label of one row of `_rows` (None when the feature has neither examples nor logits)."""
    _, _, _, peaks, n_content, n, artefacts, nxts, prvs, words, phrase, topic, lg = row
    logits = says(lg["s"], lg["p"], lg["n"], lg["mu"], _spread(lg["mu"], lg["m2"]), generic) if lg else []
    nxt, prv = _context(nxts, n), _phrase(phrase) or _context(prvs, n)
    if n and peaks and n_content / n >= CONTENT_SHARE:
        shown = list(dict.fromkeys(p.strip(" ") for p in peaks))
        named = " ".join([*shown, *(words or []), *prv, *nxt])
        return describe(shown, nxt, logits, prv, words, _topic(topic, named))
    if n and artefacts:
        kinds: dict[str, list[str]] = {}
        for p in artefacts:
            kinds.setdefault(p["kind"], []).append(p["peak"])
        kind = next(iter(kinds))  # the kind of the most common artefact peak
        text = artefact_name(kind, kinds[kind])
        if prv and kind != "start":
            text += " after " + "/".join(_show(t) for t in prv)
        if nxt and kind not in ("special", "start"):
            text += " before " + "/".join(_show(t) for t in nxt)
        context = _topic(topic, text) if kind != "start" else []
        if context:
            text += " (context: " + ", ".join(context) + ")"
        return text + (" → says " + ", ".join(_show(t) for t in logits) if logits else "")
    return describe([], None, logits)


def compute_labels(con: duckdb.DuckDBPyConnection, model: str | None = None,
                   source: str | None = None) -> list[tuple[str, str, int, str | None]]:
    """(modelId, layer, index, label or None) for every feature in scope, without writing anything."""
    generic = generic_logit_tokens(con, model)
    return [(r[0], r[1], r[2], feature_label(r, generic.get(r[0], frozenset()))) for r in _rows(con, model, source)]


def label_features(store: FeatureStore, *, model: str | None = None, source: str | None = None) -> BaselineSummary:
    """Write (replacing earlier baseline labels) one `featuredb-baseline` explanation per feature in scope."""
    if not has_features(store, Scope(model, source)):
        scope = "/".join(x for x in (model, source) if x) or "the store"
        raise NotFoundError(f"no features in {scope} to label")
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    out: dict[str, list[Any]] = {k: [] for k in ("modelId", "layer", "index", "description")}
    unlabelled = 0
    for m, layer, index, text in compute_labels(store.con, model, source):
        if text is None:
            unlabelled += 1
            continue
        for k, v in zip(out, (m, layer, index, text)):
            out[k].append(v)
    n_rows = len(out["description"])
    table = pa.table({**out, "typeName": [BASELINE_TYPE] * n_rows, "explanationModelName": [BASELINE_TYPE] * n_rows,
                      "authorId": ["featuredb"] * n_rows, "createdAt": [now] * n_rows, "updatedAt": [now] * n_rows})
    replace_labels_of_type(store, Scope(model, source), BASELINE_TYPE, table)
    return BaselineSummary(n_rows, unlabelled)
