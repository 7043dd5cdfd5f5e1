"""Export circuit-tracer feature files: {out}/{scan}/{cantor(layer, index)}.json, as its local frontend loads them."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from featuredb.errors import FeatureDBError, NotFoundError
from featuredb.identity import cantor_pair, layer_of_source
from featuredb.store import reads
from featuredb.store.export_tables import activation_rows_in_range, feature_rows_page
from featuredb.store.feature_store import FeatureStore

CHUNK = 1024
HISTOGRAM_BINS = 40
# The activation columns a feature file is built from.
EXAMPLE_COLUMNS = ["index", "tokens", "values", "maxValue", "minValue", "maxValueTokenIndex", "binMin", "binMax",
                   "binContains"]


def _interval_name(i: int, bin_min: float | None, bin_max: float | None, contains: float | None) -> str:
    rng = f"{bin_min:.3g} to {bin_max:.3g}" if bin_min is not None and bin_max is not None else "?"
    share = f", contains {contains * 100:.3g}%" if contains is not None and contains >= 0 else ""
    return f"Interval {i}: {rng}{share}"


def _example(act: dict[str, Any]) -> dict[str, Any]:
    return {
        "tokens": act["tokens"] or [],
        "tokens_acts_list": act["values"] or [],
        "train_token_ind": act["maxValueTokenIndex"] if act["maxValueTokenIndex"] is not None else 0,
        "is_repeated_datapoint": False,
    }


def even_histogram(centres: list[float], heights: list[float], lo: float, hi: float,
                   bins: int = HISTOGRAM_BINS) -> list[float]:
    """Neuronpedia's histogram (bar centres and heights, any spacing) as counts in `bins` equal bins over
    [lo, hi], the form circuit-tracer's frontend draws (bar i covers lo + i * (hi - lo) / bins)."""
    if not heights or hi <= lo:
        return []
    out = [0.0] * bins
    for c, h in zip(centres, heights):
        out[min(bins - 1, max(0, int((c - lo) / (hi - lo) * bins)))] += float(h)
    return out


def feature_file(model: str, source: str, feature: dict[str, Any], acts: list[dict[str, Any]]) -> dict[str, Any]:
    """One circuit-tracer feature record from a feature row and its activations (any order)."""
    top = sorted((a for a in acts if a["binMin"] is None or a["binMin"] < 0),
                 key=lambda a: -(a["maxValue"] or 0.0))
    bins: dict[tuple[Any, Any, Any], list[dict[str, Any]]] = defaultdict(list)
    for a in acts:
        if a["binMin"] is not None and a["binMin"] >= 0:
            bins[(a["binMin"], a["binMax"], a["binContains"])].append(a)
    quantiles = [{"quantile_name": "Top activations", "examples": [_example(a) for a in top]}] if top else []
    for i, (b, members) in enumerate(sorted(bins.items(), key=lambda kv: -(kv[0][0] or 0.0))):
        members.sort(key=lambda a: -(a["maxValue"] or 0.0))
        quantiles.append({"quantile_name": _interval_name(i, *b), "examples": [_example(a) for a in members]})
    values_min = [a["minValue"] for a in acts if a["minValue"] is not None]
    values_max = [a["maxValue"] for a in acts if a["maxValue"] is not None]
    act_max = feature["maxActApprox"] or (max(values_max) if values_max else 0.0)
    return {
        "transcoder_id": f"{model}/{source}",
        "index": int(feature["index"]),
        "layer": layer_of_source(source),
        "examples_quantiles": quantiles,
        "top_logits": feature["pos_str"] or [],
        "bottom_logits": feature["neg_str"] or [],
        "top_logits_values": feature["pos_values"] or [],
        "bottom_logits_values": feature["neg_values"] or [],
        "act_min": min([0.0, *values_min]),
        "act_max": act_max,
        "quantile_values": sorted({b[1] for b in bins if b[1] is not None}),
        "histogram": even_histogram(feature["freq_hist_data_bar_values"] or [],
                                    feature["freq_hist_data_bar_heights"] or [], min([0.0, *values_min]), act_max),
        "activation_frequency": feature["frac_nonzero"] or 0.0,
    }


def export_pairs(store: FeatureStore, model: str | None = None,
                 source: str | None = None) -> list[tuple[str, str]]:
    """(model, source) pairs with features to export; NotFoundError when there are none."""
    pairs = [(m, s) for m, s in store.sources(model, source) if reads.has_features(store, reads.Scope(m, s))]
    if not pairs:
        raise NotFoundError(f"{store.path}: no features to export for model={model or '*'} source={source or '*'}")
    return pairs


def source_layer(model: str, source: str) -> int:
    """The layer of a source id, or a FeatureDBError saying circuit-tracer ids need one."""
    try:
        return layer_of_source(source)
    except ValueError as e:
        raise FeatureDBError(f"{model}/{source}: {e}; circuit-tracer ids need a layer number") from None


def features_in_pairs(store: FeatureStore, pairs: list[tuple[str, str]]) -> int:
    """How many feature rows the pairs hold."""
    return sum(reads.count_features(store, reads.Scope(m, s)) for m, s in pairs)


def feature_records(store: FeatureStore, model: str, source: str,
                    chunk: int = CHUNK) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, circuit-tracer feature record) for every feature of one source, in index order, `chunk` at a time."""
    offset = 0
    while True:
        feats = feature_rows_page(store, model, source, chunk, offset)
        if not feats:
            return
        lo, hi = feats[0]["index"], feats[-1]["index"]
        acts_by: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for a in activation_rows_in_range(store, model, source, lo, hi, EXAMPLE_COLUMNS):
            acts_by[a["index"]].append(a)
        for f in feats:
            yield int(f["index"]), feature_file(model, source, f, acts_by.get(f["index"], []))
        offset += chunk


def export_circuit_tracer(store: FeatureStore, out: str | Path, *, model: str | None = None,
                          source: str | None = None, scan: str | None = None,
                          progress: bool | None = None) -> dict[str, Any]:
    """Write one {cantor}.json per feature under {out}/{scan}/ (scan defaults to the model id)."""
    started = time.perf_counter()
    out = Path(out)
    pairs = export_pairs(store, model, source)
    # Cantor ids are unique per (layer, index) only: two source sets of one model cannot share a scan folder.
    owners: dict[tuple[str, int], str] = {}
    for m, s in pairs:
        layer = source_layer(m, s)
        scan_dir = scan or m
        if (scan_dir, layer) in owners:
            raise FeatureDBError(
                f"sources {owners[(scan_dir, layer)]} and {s} would share {scan_dir}/ at layer {layer}; "
                "pick one with --source or give each its own --scan")
        owners[(scan_dir, layer)] = s
    total = features_in_pairs(store, pairs)
    written = 0
    bar = tqdm(total=total, unit="feature", desc="export circuit-tracer",
               disable=None if progress is None else not progress, leave=False)
    for m, s in pairs:
        layer = layer_of_source(s)
        folder = out / (scan or m)
        folder.mkdir(parents=True, exist_ok=True)
        for index, record in feature_records(store, m, s):
            path = folder / f"{cantor_pair(layer, index)}.json"
            path.write_text(json.dumps(record, separators=(",", ":")), encoding="utf-8")
            written += 1
            bar.update(1)
    bar.close()
    return {"out": str(out), "features": written, "scans": sorted({scan or m for m, _ in pairs}),
            "seconds": round(time.perf_counter() - started, 3)}
