"""Names a person would give a supernode, from its members' labels (each already the feature's best one).

Baseline-style labels (`"Texas"/"Dallas" after "the" → says "Austin"`) are read as parts: when most
members have such a label, the peak tokens that several of them share name the group, and a "→ says X" that half of them share is kept.
Groups whose members are mostly artefact labels ("punctuation ...", "start of text", "end of turn
(<|im_end|>)" ...) are named by that artefact. Free-text labels (an LLM's) name the group by the most
common one, else the most influential member's, cut at a word boundary.
"""

from __future__ import annotations

import re
from collections import Counter

NAME_CHARS = 40
ARTEFACTS = ("start of text", "punctuation", "line breaks", "whitespace / indentation", "<unk> (unknown word)",
             "end of turn", "start of a turn", "end of text", "special token", "byte fragments", "padding")
_QUOTED = re.compile(r'"([^"]+)"')
_PARTS = re.compile(r" (?:in|after|before) \"| \(context: | → says ")


def artefact_kind(label: str) -> str | None:
    """The artefact a baseline label names ("punctuation", "start of text", ...), or None."""
    low = label.strip().lower()
    return next((a for a in ARTEFACTS if low.startswith(a)), None)


def _peaks(label: str) -> list[str]:
    """The quoted peak tokens at the start of a baseline label ('"Texas"/"Dallas" after ...' -> [Texas, Dallas])."""
    if not label.startswith('"'):
        return []
    head = _PARTS.split(label, maxsplit=1)[0]
    return _QUOTED.findall(head)


def _says(label: str) -> list[str]:
    return _QUOTED.findall(label.split(" → says ", 1)[1]) if " → says " in label else []


def _cut(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > NAME_CHARS:
        text = text[:NAME_CHARS].rsplit(" ", 1)[0].rstrip(",;:") + "…"
    return text


def supernode_name(labels: list[str], positions: list[int] | None = None) -> tuple[str, str]:
    """(name, kind) of a group from its members' labels, most influential member first; kind is "content" or
    the artefact kind."""
    labels = [lab.strip() for lab in labels]
    named = [lab for lab in labels if lab]
    if not named:
        where = f" at {min(positions)}" if positions else ""
        return f"{len(labels)} unlabelled features{where}", "unlabelled"
    kinds = Counter(k for k in (artefact_kind(lab) for lab in named) if k)
    if kinds and kinds.most_common(1)[0][1] * 2 >= len(named):
        kind = kinds.most_common(1)[0][0]
        return kind, kind
    with_peaks = [lab for lab in named if _peaks(lab) and artefact_kind(lab) is None]
    peaks = Counter(p for lab in with_peaks for p in dict.fromkeys(_peaks(lab)))
    if peaks and len(with_peaks) * 2 > len(named):
        shared = [p for p, c in peaks.most_common(3) if c >= 2] or _peaks(with_peaks[0])[:2]
        name = "/".join(f'"{p}"' for p in shared)
        says = Counter(w for lab in named for w in dict.fromkeys(_says(lab)))
        top = [w for w, c in says.most_common(2) if c * 2 >= len(named)]
        if top:
            name += " → says " + ", ".join(f'"{w}"' for w in top)
        return _cut(name), "content"
    common, n = Counter(named).most_common(1)[0]
    return _cut(common if n >= 2 else named[0]), "content"
