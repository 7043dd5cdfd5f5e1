"""Explainer prompts in the manner of Neuronpedia's auto-interp types, as OpenAI chat message lists.

- `np_max-act-logits` (Neuronpedia, apps/webapp/lib/external/autointerp-explainer-logits.ts, Apache-2.0): four
  lists (the max-activating tokens, the tokens right after them, the top positive logits, the top activating
  texts with the max-activating token marked) and few-shot examples that ask for a 1-6 word answer, or
  'say X' when the feature predicts the next token.
- `oai_token-act-pair` (OpenAI's explainer as Neuronpedia runs it, autointerp-explainer.ts): token<TAB>activation
  lines with activations scaled to 0-10, completing "the main thing this neuron does is find".

`parse_explanation` turns a reply into a short label (None when nothing usable came back).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from dataclasses import dataclass, field
from typing import Sequence

NP_MAX_ACT_LOGITS = "np_max-act-logits"
OAI_TOKEN_ACT_PAIR = "oai_token-act-pair"
TYPE_NAMES = (NP_MAX_ACT_LOGITS, OAI_TOKEN_ACT_PAIR)

MAX_EXAMPLES = 10  # Neuronpedia's ACTIVATIONS_TO_LOAD
OAI_TOP = 8  # top examples in a token/activation prompt ...
OAI_INTERVAL = 2  # ... and quantile (interval) examples, so the explainer sees weaker activations too
WINDOW = 24  # tokens kept either side of the max-activating token (Neuronpedia's TOKENS_AROUND_MAX_ACTIVATING_TOKEN)
MAX_LOGITS = 10
MAX_EXPLANATION_CHARS = 200
MARK_OPEN, MARK_CLOSE = "<<", ">>"
# Completion budgets: np_max-act-logits replies reason through its methods before the answer.
MAX_TOKENS = {NP_MAX_ACT_LOGITS: 400, OAI_TOKEN_ACT_PAIR: 60}


@dataclass
class Example:
    """One stored activation record: its tokens, per-token values and whether it is a top example."""

    tokens: list[str]
    values: list[float]
    max_value: float | None = None
    max_index: int | None = None  # maxValueTokenIndex when stored
    top: bool = True  # binMin = -1

    def peak(self) -> int:
        """Index of the max-activating token (the stored one when valid, else the argmax of values)."""
        n = len(self.tokens)
        if self.max_index is not None and 0 <= self.max_index < n:
            return self.max_index
        vals = self.values[:n]
        return max(range(len(vals)), key=lambda i: vals[i]) if vals else 0

    def peak_value(self) -> float:
        if self.max_value is not None:
            return float(self.max_value)
        return max(self.values, default=0.0)


@dataclass
class FeatureExamples:
    """What an explainer prompt is built from: a feature's examples and its top positive logits."""

    model: str
    source: str
    index: int
    examples: list[Example] = field(default_factory=list)
    pos_str: list[str] = field(default_factory=list)


def _clean(token: str) -> str:
    """A token for a list line: SentencePiece/BPE space marks as spaces, no newlines, trimmed."""
    return token.replace("\u2581", " ").replace("\u0120", " ").replace("\n", "").replace("\r", "").strip()


def _inline(token: str) -> str:
    """A token inside a text line: marks as spaces, newlines as two spaces (as Neuronpedia writes them)."""
    return token.replace("\u2581", " ").replace("\u0120", " ").replace("\r", "").replace("\n", "  ")


def _marked(token: str) -> str:
    """The max-activating token wrapped in << >>, its leading spaces left outside ("the <<Texas>>")."""
    core = token.lstrip(" ")
    if not core:
        return MARK_OPEN + token + MARK_CLOSE
    return token[:len(token) - len(core)] + MARK_OPEN + core + MARK_CLOSE


def _dedup(examples: Sequence[Example]) -> list[Example]:
    seen: set[str] = set()
    out = []
    for ex in examples:
        key = "".join(ex.tokens)
        if ex.tokens and key not in seen:
            seen.add(key)
            out.append(ex)
    return out


def _by_peak(examples: Sequence[Example]) -> list[Example]:
    return sorted(examples, key=lambda e: -e.peak_value())


def select_examples(feature: FeatureExamples, type_name: str) -> list[Example]:
    """The examples a prompt shows: distinct texts, top examples first (interval ones fill up or, for
    oai_token-act-pair, add weaker activations)."""
    usable = _dedup([e for e in feature.examples if e.tokens and e.values])
    top = _by_peak([e for e in usable if e.top])
    interval = _by_peak([e for e in usable if not e.top])
    if type_name == OAI_TOKEN_ACT_PAIR:
        chosen = top[:OAI_TOP]
        extra = interval[:max(OAI_INTERVAL, OAI_TOP - len(chosen))]
        return chosen + extra
    return (top + interval)[:MAX_EXAMPLES]


def _window(ex: Example) -> tuple[int, int, int]:
    peak = ex.peak()
    return max(0, peak - WINDOW), min(len(ex.tokens), peak + WINDOW + 1), peak


# -- np_max-act-logits ------------------------------------------------------------------------------------

NP_SYSTEM = f"""You are explaining the behavior of a neuron in a neural network. Your response should be a very concise explanation (1-6 words) that captures what the neuron detects or predicts by finding patterns in lists.

To determine the explanation, you are given four lists:

- MAX_ACTIVATING_TOKENS, which are the top activating tokens in the top activating texts.
- TOKENS_AFTER_MAX_ACTIVATING_TOKEN, which are the tokens immediately after the max activating token.
- TOP_POSITIVE_LOGITS, which are the most likely words or tokens associated with this neuron.
- TOP_ACTIVATING_TEXTS, which are top activating texts, with the max activating token marked {MARK_OPEN}like this{MARK_CLOSE}.

You should look for a pattern by trying the following methods in order. Once you find a pattern, stop and return that pattern. Do not proceed to the later methods.
Method 1: Look at MAX_ACTIVATING_TOKENS. If they share something specific in common, or are all the same token or a variation of the same token (like different cases or conjugations), respond with that token.
Method 2: Look at TOKENS_AFTER_MAX_ACTIVATING_TOKEN. Try to find a specific pattern or similarity in all the tokens. A common pattern is that they all start with the same letter. If you find a pattern (like 's word', 'the ending -ing', 'number 8'), respond with 'say [the pattern]'. You can ignore uppercase/lowercase differences for this.
Method 3: Look at TOP_POSITIVE_LOGITS for similarities and describe it very briefly (1-3 words).
Method 4: Look at TOP_ACTIVATING_TEXTS and make a best guess by describing the broad theme or context, ignoring the max activating tokens.

Rules:
- Keep your explanation extremely concise (1-6 words, mostly 1-3 words).
- Do not add unnecessary phrases like "words related to", "concepts related to", or "variations of the word".
- Do not mention "tokens" or "patterns" in your explanation.
- The explanation should be specific. For example, "unique words" is not a specific enough pattern, nor is "foreign words".
- Remember to use the 'say [the pattern]' when using Method 2 above (pattern found in TOKENS_AFTER_MAX_ACTIVATING_TOKEN).
- If you absolutely cannot make any guesses, return the first token in MAX_ACTIVATING_TOKENS.

Respond by going through each method number until you find one that helps you find an explanation for what this neuron is detecting or predicting. If a method does not help you find an explanation, briefly explain why it does not, then go on to the next method.
Finally, end your response with the method number you used, the reason for your explanation, and then the explanation on its own line, as "Explanation: <explanation>"."""


def _np_user(n: int, after: Sequence[str], peaks: Sequence[str], logits: Sequence[str], texts: Sequence[str]) -> str:
    def block(name: str, lines: Sequence[str]) -> str:
        body = "\n".join(lines)
        return f"<{name}>\n\n{body}\n\n</{name}>"

    return (f"\n\nNeuron {n}\n\n{block('TOKENS_AFTER_MAX_ACTIVATING_TOKEN', after)}\n\n\n"
            f"{block('MAX_ACTIVATING_TOKENS', peaks)}\n\n\n{block('TOP_POSITIVE_LOGITS', logits)}\n\n\n"
            f"{block('TOP_ACTIVATING_TEXTS', texts)}\n\n\nExplanation of neuron {n} behavior: ")


SHOTS_FILE = "np_max_act_logits_shots.json"  # Neuronpedia's four worked examples, as data beside this module


def _np_shots() -> list[tuple[str, str]]:
    """(user, assistant) messages of the worked examples np_max-act-logits puts before each request."""
    shots = json.loads(resources.files("featuredb.labels").joinpath(SHOTS_FILE).read_text(encoding="utf-8"))
    return [(_np_user(s["neuron"], s["tokens_after_max_activating_token"], s["max_activating_tokens"],
                      s["top_positive_logits"], s["top_activating_texts"]), s["answer"]) for s in shots]


_NP_SHOTS = _np_shots()


def np_max_act_logits_messages(feature: FeatureExamples) -> list[dict[str, str]]:
    """The np_max-act-logits request for one feature."""
    examples = select_examples(feature, NP_MAX_ACT_LOGITS)
    after, peaks, texts = [], [], []
    for ex in examples:
        start, end, peak = _window(ex)
        peaks.append(_clean(ex.tokens[peak]))
        after.append(_clean(ex.tokens[peak + 1]) if peak + 1 < len(ex.tokens) else "")
        texts.append("".join(ex.tokens[start:peak]).replace("\n", "  ")
                     + _marked(_inline(ex.tokens[peak]))
                     + "".join(ex.tokens[peak + 1:end]).replace("\n", "  "))
    logits = [t for t in (_clean(s) for s in feature.pos_str[:MAX_LOGITS]) if t]
    messages = [{"role": "system", "content": NP_SYSTEM}]
    for user, assistant in _NP_SHOTS:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": _np_user(5, after, peaks, logits, texts)})
    return messages


# -- oai_token-act-pair -----------------------------------------------------------------------------------

OAI_SYSTEM = """We're studying neurons in a neural network. Each neuron looks for some particular thing in a short document. Look at the parts of the document the neuron activates for and summarize in a single sentence what the neuron is looking for. Don't list examples of words.

The activation format is token<tab>activation. Activation values range from 0 to 10. A neuron finding what it's looking for is represented by a non-zero activation value. The higher the activation value, the stronger the match."""

OAI_LEAD = "the main thing this neuron does is find"


def _oai_block(pairs: Sequence[Sequence[tuple[str, int]]]) -> str:
    out = ""
    for record in pairs:
        out += "\n<start>\n" + "\n".join(f"{tok}\t{val}" for tok, val in record) + "\n<end>"
    return out


def _oai_user(n: int, pairs: Sequence[Sequence[tuple[str, int]]], *, filtered: bool = True) -> str:
    text = f"\n\nNeuron {n}\nActivations:{_oai_block(pairs)}\n"
    if filtered:
        nonzero = [[(t, v) for t, v in rec if v] for rec in pairs]
        text += f"\nSame activations, but with all zeros filtered out:{_oai_block(nonzero)}\n"
    return text + f"\nExplanation of neuron {n} behavior: {OAI_LEAD}"


def _pairs(text: str) -> list[tuple[str, int]]:
    out = []
    for line in text.strip("\n").split("\n"):
        tok, val = line.rsplit("\t", 1)
        out.append((tok, int(val)))
    return out


_OAI_SHOTS: list[tuple[str, str]] = [
    (_oai_user(1, [_pairs("t\t0\nurt\t0\nur\t0\nro\t0\n is\t0\n fab\t0\nulously\t0\n funny\t0\n and\t0\n over\t0\n"
                          " the\t0\n top\t0\n as\t0\n a\t0\n '\t0\nvery\t0\n sneaky\t0\n'\t1\n but\t0\nler\t0\n"
                          " who\t0\n excel\t0\ns\t0\n in\t0\n the\t0\n art\t0\n of\t0\n impossible\t0\n"
                          " disappearing\t6\n/\t0\nre\t0\napp\t0\nearing\t10\n acts\t0"),
                   _pairs("esc\t0\naping\t9\n the\t4\n studio\t0\n ,\t0\n pic\t0\ncol\t0\ni\t0\n is\t0\n warm\t0\n"
                          "ly\t0\n affecting\t3\n and\t0\n so\t0\n is\t0\n this\t0\n ad\t0\nroit\t0\nly\t0\n"
                          " minimalist\t0\n movie\t0\n .\t0")]),
     " present tense verbs ending in 'ing'."),
    (_oai_user(2, [_pairs("as\t0\n sac\t0\nchar\t0\nine\t0\n movies\t0\n go\t0\n ,\t0\n this\t0\n is\t0\n"
                          " likely\t0\n to\t0\n cause\t0\n massive\t0\n cardiac\t0\n arrest\t10\n if\t0\n taken\t0\n"
                          " in\t0\n large\t0\n doses\t0\n .\t0"),
                   _pairs("shot\t0\n perhaps\t0\n '\t0\nart\t0\nistically\t0\n'\t0\n with\t0\n handheld\t0\n"
                          " cameras\t0\n and\t0\n apparently\t0\n no\t0\n movie\t0\n lights\t0\n by\t0\n jo\t0\n"
                          "aquin\t0\n b\t0\naca\t0\n-\t0\nas\t0\nay\t0\n ,\t0\n the\t0\n low\t0\n-\t0\nbudget\t0\n"
                          " production\t0\n swings\t0\n annoy\t0\ningly\t0\n between\t0\n vert\t0\nigo\t9\n and\t0\n"
                          " opacity\t0\n .\t0")]),
     " words related to physical medical conditions."),
    (_oai_user(3, [_pairs("the\t0\n sense\t0\n of\t0\n together\t3\nness\t7\n in\t0\n our\t0\n town\t1\n is\t0\n"
                          " strong\t0\n .\t0"),
                   _pairs("a\t0\n buoy\t0\nant\t0\n romantic\t0\n comedy\t0\n about\t0\n friendship\t0\n ,\t0\n"
                          " love\t0\n ,\t0\n and\t0\n the\t0\n truth\t0\n that\t0\n we\t2\n're\t4\n all\t3\n in\t7\n"
                          " this\t10\n together\t5\n .\t0")]),
     " phrases related to community."),
]


def _scaled(ex: Example, top_value: float) -> list[tuple[str, int]]:
    """The example's window as (token, activation scaled to 0-10 against the feature's top activation)."""
    start, end, _ = _window(ex)
    out = []
    for i in range(start, end):
        v = ex.values[i] if i < len(ex.values) else 0.0
        scaled = 0 if top_value <= 0 or v <= 0 else min(10, max(0, round(10 * v / top_value)))
        out.append((_inline(ex.tokens[i]).replace("\t", " "), scaled))
    return out


def oai_token_act_pair_messages(feature: FeatureExamples) -> list[dict[str, str]]:
    """The oai_token-act-pair request for one feature."""
    examples = select_examples(feature, OAI_TOKEN_ACT_PAIR)
    top_value = max((e.peak_value() for e in examples), default=0.0)
    messages = [{"role": "system", "content": OAI_SYSTEM}]
    for user, assistant in _OAI_SHOTS:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": _oai_user(4, [_scaled(e, top_value) for e in examples])})
    return messages


BUILDERS = {NP_MAX_ACT_LOGITS: np_max_act_logits_messages, OAI_TOKEN_ACT_PAIR: oai_token_act_pair_messages}


def build_messages(feature: FeatureExamples, type_name: str = NP_MAX_ACT_LOGITS) -> list[dict[str, str]]:
    """The chat messages explaining `feature` with the prompt of `type_name`."""
    try:
        builder = BUILDERS[type_name]
    except KeyError:
        raise ValueError(f"unknown explanation type {type_name!r}; expected one of {', '.join(TYPE_NAMES)}") from None
    return builder(feature)


# -- replies ------------------------------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_PREFIX = re.compile(r"^\s*(?:\*\*|__)?\s*explanation(?:\s+of\s+neuron\s+\d+\s+behavior)?\s*(?:\*\*|__)?\s*:\s*"
                     r"(?:\*\*|__)?", re.IGNORECASE)
_LEAD = re.compile(r"^\s*(?:the\s+main\s+thing\s+this\s+neuron\s+does\s+is\s+find(?:ing)?|this\s+neuron\s+"
                   r"(?:finds|detects|looks\s+for))\s*:?\s*", re.IGNORECASE)
_METHOD = re.compile(r"\bmethod\s+[1-5]\b", re.IGNORECASE)
_QUOTES = {'"': '"', "'": "'", "`": "`", "\u201c": "\u201d", "\u2018": "\u2019", "*": "*", "_": "_"}


def _unwrap(text: str) -> str:
    """Strip whitespace, a trailing period and quotes/markdown wrapping the whole text, repeatedly."""
    while True:
        before = text
        text = text.strip()
        if text.endswith(".") and not text.endswith(".."):
            text = text[:-1].rstrip()
        if text.startswith("**") and text.endswith("**") and len(text) > 4:
            text = text[2:-2]
        elif text.count("**") == 1:  # half of a bold wrapping split by "Explanation:"
            text = text.replace("**", "")
        for o, c in _QUOTES.items():
            inner = text[1:-1]
            if len(text) >= 2 and text[0] == o and text[-1] == c and o not in inner and c not in inner:
                text = inner
                break
        if text == before:
            return text


def parse_explanation(reply: str | None, type_name: str = NP_MAX_ACT_LOGITS) -> str | None:
    """A short explanation from an explainer's reply: the text after the last "Explanation:", without quotes,
    markdown, a trailing period or "the main thing this neuron does is find"; None when nothing usable remains
    (empty, or still talking about its methods)."""
    if not reply:
        return None
    text = _THINK.sub("", reply).strip()
    found = list(re.finditer(r"explanation(?:\s+of\s+neuron\s+\d+\s+behavior)?\s*(?:\*\*|__)?\s*:", text,
                             re.IGNORECASE))
    if found:
        text = text[found[-1].end():]
        if not text.strip().endswith(("**", "__")):  # the closing half of "**Explanation:**"
            text = re.sub(r"^\s*(?:\*\*|__)", "", text)
    text = _PREFIX.sub("", text)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    text = _LEAD.sub("", lines[0])
    text = _unwrap(text)
    if not text or _METHOD.search(text):
        return None
    if len(text) > MAX_EXPLANATION_CHARS:
        text = text[:MAX_EXPLANATION_CHARS].rsplit(" ", 1)[0].rstrip(",;: ") + "…"
    return text or None
