"""Read a corpus as documents and cut it into fixed-length token windows, in a deterministic order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from featuredb.errors import BadInputError, FeatureDBError
from ingest.wikitext import wikitext_articles

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
DEFAULT_CORPUS = "installed-docs"
WIKITEXT_PREFIX = "wikitext:"  # wikitext:PATH reads WikiText articles as natural text (ingest/wikitext.py)


@dataclass
class CorpusStats:
    """What reading the corpus skipped, replaced and produced."""

    documents: int = 0
    empty_documents: int = 0
    replaced_bytes: int = 0
    tokens: int = 0
    windows: int = 0

    def as_dict(self) -> dict[str, int]:
        """JSON-ready form."""
        return dict(self.__dict__)


def _decode(raw: bytes, stats: CorpusStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        stats.replaced_bytes += text.count("\ufffd") - raw.count("\ufffd".encode())
        return text


def _text_file(path: Path, stats: CorpusStats) -> Iterator[str]:
    """Paragraphs (blocks between blank lines) of a text file, read line by line."""
    block: list[str] = []
    with open(path, "rb") as f:
        for raw in f:
            line = _decode(raw, stats)
            if line.strip():
                block.append(line)
            elif block:
                yield "".join(block)
                block = []
    if block:
        yield "".join(block)


def _jsonl_file(path: Path, field: str, stats: CorpusStats) -> Iterator[str]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            line = _decode(raw, stats)
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadInputError(f"{path}:{n}: malformed JSON ({e.msg})") from None
            if not isinstance(rec, dict) or field not in rec:
                raise BadInputError(f"{path}:{n}: no field {field!r} (choose one with --text-field)")
            value = rec[field]
            if not isinstance(value, str):
                raise BadInputError(f"{path}:{n}: field {field!r} is not a string")
            yield value


def _parquet_file(path: Path, column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise BadInputError(f"{path}: not a readable Parquet file ({e})") from None
    if column not in pf.schema_arrow.names:
        raise BadInputError(f"{path}: no column {column!r} (choose one with --text-column); "
                            f"columns: {', '.join(pf.schema_arrow.names)}")
    for batch in pf.iter_batches(columns=[column], batch_size=1024):
        for value in batch.column(0).to_pylist():
            yield value if isinstance(value, str) else ""


def installed_docs() -> Iterator[str]:
    """The long descriptions that installed Python distributions ship (offline on every installation)."""
    dists = sorted(metadata.distributions(), key=lambda d: (d.metadata.get("Name") or "").lower())
    seen: set[str] = set()
    for d in dists:
        name = (d.metadata.get("Name") or "").lower()
        if name in seen:
            continue
        seen.add(name)
        body = d.metadata.get_payload() or d.metadata.get("Description") or ""  # type: ignore[attr-defined]
        if isinstance(body, str):
            yield from (p for p in body.split("\n\n"))


def _hf_dataset(name: str, split: str, field: str) -> Iterator[str]:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise FeatureDBError("hf: corpora need the 'datasets' package (pip install datasets)") from None
    try:
        ds = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:
        raise FeatureDBError(f"cannot open Hugging Face dataset {name!r} ({split}): {str(e).splitlines()[0]}") from None
    for rec in ds:
        yield rec.get(field) or ""


def iter_documents(spec: str | None, stats: CorpusStats, *, text_field: str = "text",
                   text_column: str = "text", split: str = "train") -> Iterator[str]:
    """Non-empty documents of a corpus: a file, a folder, 'hf:NAME', 'wikitext:PATH', or the offline default."""
    for doc in _raw_documents(spec, text_field=text_field, text_column=text_column, split=split, stats=stats):
        if not doc or not doc.strip():
            stats.empty_documents += 1
            continue
        stats.documents += 1
        yield doc


def _raw_documents(spec: str | None, *, text_field: str, text_column: str, split: str,
                   stats: CorpusStats) -> Iterator[str]:
    if spec in (None, "", DEFAULT_CORPUS):
        yield from installed_docs()
        return
    assert spec is not None
    if spec.startswith("hf:"):
        yield from _hf_dataset(spec[3:], split, text_field)
        return
    if spec.startswith(WIKITEXT_PREFIX):
        yield from wikitext_articles(spec[len(WIKITEXT_PREFIX):])
        return
    path = Path(spec)
    if not path.exists():
        raise BadInputError(f"{path}: no such corpus file or folder")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    used = 0
    for f in files:
        suffix = f.suffix.lower()
        if suffix in JSONL_SUFFIXES or (suffix == ".json" and path.is_file()):
            yield from _jsonl_file(f, text_field, stats)
        elif suffix == ".parquet":
            yield from _parquet_file(f, text_column)
        elif suffix in TEXT_SUFFIXES or path.is_file():
            yield from _text_file(f, stats)
        else:
            continue
        used += 1
    if not used:
        raise BadInputError(f"{path}: no .txt/.md/.jsonl/.parquet files to read")


def expects_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the tokenizer itself starts sequences with BOS, so windows should too."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a").input_ids
    return bool(ids) and ids[0] == bos


def iter_windows(documents: Iterator[str], tokenizer: PreTrainedTokenizerBase, ctx_len: int, max_tokens: int | None,
                 stats: CorpusStats) -> Iterator[list[int]]:
    """Token windows of exactly ctx_len (BOS first when the model expects it); documents joined by EOS."""
    bos = expects_bos(tokenizer)
    body = ctx_len - (1 if bos else 0)
    if body < 1:
        raise FeatureDBError(f"--ctx-len {ctx_len} is too short")
    eos = getattr(tokenizer, "eos_token_id", None)
    buf: list[int] = []
    batch: list[str] = []

    def flush() -> Iterator[list[int]]:
        nonlocal buf
        for ids in tokenizer(batch, add_special_tokens=False).input_ids:
            buf.extend(ids)
            if eos is not None:
                buf.append(eos)
        while len(buf) >= body:
            window = ([tokenizer.bos_token_id] if bos else []) + buf[:body]
            buf = buf[body:]
            if max_tokens is not None and stats.tokens + ctx_len > max_tokens:
                return
            stats.tokens += ctx_len
            stats.windows += 1
            yield window
        batch.clear()

    for doc in documents:
        batch.append(doc)
        if len(batch) >= 64:
            for w in flush():
                yield w
            if max_tokens is not None and stats.tokens + ctx_len > max_tokens:
                return
    if batch:
        yield from flush()
