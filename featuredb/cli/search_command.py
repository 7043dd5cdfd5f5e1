"""CLI: `featuredb search` (every mode) and `featuredb reindex`."""

from __future__ import annotations

import click

from featuredb.cli.common import db_option, emit_json, json_option, open_store
from featuredb.errors import FeatureDBError
from featuredb.object_storage import is_remote
from featuredb.search.api import MODES, search
from featuredb.search.filters import SearchFilters, parse_layers
from featuredb.search.hits import SearchHit, clip, hit_table
from featuredb.store.search_indexes import has_search_tables, is_dirty
from featuredb.search.inference import InferenceResult, inference_search
from featuredb.store.reads import model_ids


def print_hits(hits: list[SearchHit]) -> None:
    """An aligned table: rank, feature, score, density, label and top tokens."""
    click.echo(hit_table(hits))


def _print_inference(r: InferenceResult) -> None:
    for t in r.by_token:
        feats = "; ".join(f"{f.source}/{f.index} {f.activation:.2f} {clip(f.label, 30)}" for f in t.top_features)
        click.echo(f"{t.position:>3} {t.token!r:<14} {feats or '-'}")
    click.echo("\nstrongest features over the text:")
    for f in r.overall:
        click.echo(f"  {f.source}/{f.index}  {f.activation:.2f}  {clip(f.label, 60)}")


def _open_current(db: str):  # type: ignore[no-untyped-def]
    """A read-only store whose search tables are current (refreshed once through a writable open if not)."""
    store = open_store(db, read_only=True)
    if has_search_tables(store.con) and not is_dirty(store.con):
        return store
    if is_remote(db):  # object storage is read-only here: search what the store holds
        if has_search_tables(store.con):
            return store
        store.close()
        raise FeatureDBError(f"{db}: search indexes are not built; run `featuredb reindex` on the store before "
                             "uploading it")
    store.close()
    with open_store(db, read_only=False) as writable:
        writable.refresh_search(progress=None)
    return open_store(db, read_only=True)


@click.command("search", short_help="Find features by concept, token, logit or by running a text.")
@click.argument("query")
@click.option("--mode", type=click.Choice([*MODES, "inference"]), default="auto", show_default=True,
              help="auto fuses text (BM25) and semantic (MiniLM); token/logit match a token; inference runs QUERY.")
@click.option("--model", help="Only this model (required for inference when the store has several).")
@click.option("--source", "sources", multiple=True, help="Only this source, e.g. 15-featuredb-skip-4k; repeatable.")
@click.option("--layers", help="Only these layers, e.g. 3,5 or 10-20 (as ingest and train take them).")
@click.option("--max-density", type=float, help="Only features firing on at most this fraction of tokens.")
@click.option("--negative", is_flag=True, help="logit mode: features that suppress the token.")
@click.option("--limit", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(1, 100), help="inference: per token.")
@click.option("--ignore-bos/--keep-bos", default=True, show_default=True, help="inference: skip the BOS token.")
@click.option("--density-threshold", type=float, help="inference: drop features denser than this.")
@db_option
@json_option
def search_command(query: str, mode: str, model: str | None, sources: tuple[str, ...], layers: str | None,
                   max_density: float | None, negative: bool, limit: int, top_k: int, ignore_bos: bool,
                   density_threshold: float | None, db: str, as_json: bool) -> None:
    """Search the store's features by concept (explanations), token, output logit, or by running a text.

    \b
    Examples:
      featuredb search "capital cities"                 # auto: BM25 + MiniLM, fused
      featuredb search " Texas" --mode token --layers 10-20
      featuredb search Austin --mode logit --max-density 0.01
      featuredb search "The capital of Texas is" --mode inference --top-k 3
    """
    store = _open_current(db)
    try:
        if mode == "inference":
            if not model:
                models = model_ids(store)
                model = models[0] if len(models) == 1 else None
                if model is None:
                    raise click.UsageError("--model is required for inference: the store has "
                                           f"{len(models)} models ({', '.join(models) or 'none'})")
            result = inference_search(store, model, query, sources=list(sources) or None, top_k=top_k,
                                      ignore_bos=ignore_bos, density_threshold=density_threshold, limit=limit)
            emit_json(result.as_dict()) if as_json else _print_inference(result)
            return
        filters = SearchFilters(model=model, sources=sources, layers=parse_layers(layers),
                                max_density=max_density)
        hits = search(store, query, mode=mode, filters=filters, limit=limit, negative=negative)
    finally:
        store.close()
    if as_json:
        emit_json({"query": query, "mode": mode, "hits": [h.as_dict() for h in hits]})
    else:
        print_hits(hits)


@click.command("reindex", short_help="Rebuild the search indexes (done automatically after writes).")
@click.option("--feature-docs", is_flag=True,
              help="Also pre-serialise every feature's GET /api/feature JSON (gzipped) so `featuredb serve` "
                   "answers it from one lookup. Writes to features, activations or explanations drop them.")
@db_option
@json_option
def reindex_command(feature_docs: bool, db: str, as_json: bool) -> None:
    """Rebuild BM25 postings, token and logit lookups and explanation embeddings from the store's rows.

    \b
    Example:
      featuredb reindex --db data/featuredb.duckdb
      featuredb reindex --feature-docs && featuredb serve    # fast GET /api/feature
    """
    with open_store(db, read_only=False) as store:
        timings: dict[str, object] = dict(store.refresh_search(progress=None))
        if feature_docs:
            from featuredb.store.feature_docs import build_feature_docs

            built = build_feature_docs(store)
            timings["feature_docs"] = built["seconds"]
            timings["feature_docs_count"] = built["features"]
            timings["feature_docs_mb"] = round(built["gzip_bytes"] / 1e6, 1)
    if as_json:
        emit_json(timings)
    else:
        click.echo(", ".join(f"{k} {v:.2f}s" if isinstance(v, float) and not k.endswith("_mb") else
                             f"{k} {v}" for k, v in timings.items()))
