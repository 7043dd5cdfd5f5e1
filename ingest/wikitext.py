"""Read WikiText (`wikitext:PATH`) as natural text: one document per article, Moses-style spacing undone.

WikiText-2/103 is tokenised with spaces around punctuation (`Dallas , Texas`), number separators written as
`@,@`/`@.@`/`@-@` and rare words replaced by `<unk>`. Trained on as is, transcoders learn features for those
artefacts, and the prompts circuit tracers write (`Fact: Dallas is in the state of`) look like nothing in the
corpus. Here each article becomes one document, headings become plain lines, the spacing is undone (as
lm-evaluation-harness's wikitext detokenizer does) and sentences holding `<unk>` are dropped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from featuredb.errors import BadInputError

_HEADING = re.compile(r"^\s*((?:= )+)(.*?)(?: =)+\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_REPLACEMENTS = (
    (" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "), (" . ", ". "), (" ! ", "! "),
    (" ? ", "? "), (" , ", ", "), (" 's", "'s"), ("n 't ", "n't "), (" 're", "'re"), (" 've", "'ve"),
    (" 'm", "'m"), (" 'll", "'ll"), (" 'd", "'d"), ("s ' ", "s' "), (" %", "%"), ("$ ", "$"),
)


def detokenize(line: str) -> str:
    """One WikiText paragraph with its tokenised spacing undone (`Dallas , Texas` → `Dallas, Texas`)."""
    s = f" {line.strip()} "
    for old, new in _REPLACEMENTS:
        s = s.replace(old, new)
    s = re.sub(r"\(\s*([^)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"\s+([.,;:!?])(?=\s|$)", r"\1", s)
    return s.strip()


def _without_unk(paragraph: str) -> str:
    return " ".join(s for s in _SENTENCE_END.split(paragraph) if "<unk>" not in s)


def _heading(title: str) -> str:
    return "" if "<unk>" in title else detokenize(title)


def _files(path: Path) -> list[Path]:
    if not path.exists():
        raise BadInputError(f"{path}: no such WikiText file or folder")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".tokens"))
    if not files:
        raise BadInputError(f"{path}: no WikiText .txt or .tokens files")
    return files


def wikitext_articles(path: str | Path) -> Iterator[str]:
    """Articles of a WikiText file or folder (valid/test/train .txt or .tokens), detokenised, in file order."""
    for f in _files(Path(path)):
        parts: list[str] = []
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                m = _HEADING.match(line)
                if m and m.group(1) == "= ":  # " = Title = " starts a new article
                    if parts:
                        yield "\n\n".join(parts)
                    title = _heading(m.group(2))
                    parts = [title] if title else []
                    continue
                text = _heading(m.group(2)) if m else _without_unk(detokenize(line))
                if text:
                    parts.append(text)
        if parts:
            yield "\n\n".join(parts)
