"""A feature's dashboard page, in the manner of Neuronpedia's: explanations, logits, histograms, examples, graphs."""

from __future__ import annotations

from typing import Any

from featuredb.labels.label_rule import score as label_score
from featuredb.store.graph_usage import GraphUse
from featuredb.server.page_charts import example_html, histogram_svg, logit_list, token_label
from featuredb.server.page_layout import SearchForm, density_text, esc, feature_url, page, path_part

NEURONPEDIA = "https://www.neuronpedia.org"


def _is_top(act: dict[str, Any]) -> bool:
    """A top example (Neuronpedia marks them binMin -1 or leaves the bin empty), not an interval sample."""
    lo = act.get("binMin")
    return lo is None or float(lo) < 0


def _score(x: Any) -> str:
    return "" if x is None else f"{float(x):.2f}"


def _explanations(exps: list[dict[str, Any]]) -> str:
    if not exps:
        return '<p class="muted">No explanation yet (<code>featuredb label features</code> writes them).</p>'
    rows = []
    for i, e in enumerate(exps):
        label = ' <span class="small muted">(label)</span>' if i == 0 else ""
        who = e.get("explanationModelName") or e.get("authorId") or ""
        who = "" if who == e.get("typeName") else who
        rows.append(f'<tr><td class="expl">{esc(e.get("description"))}{label}</td>'
                    f'<td class="small">{esc(e.get("typeName"))}<br><span class="muted">{esc(who)}</span></td>'
                    f'<td class="num small">{_score(label_score(e))}</td></tr>')
    return ('<table class="explanations"><tr><th>explanation</th><th>type</th><th>score</th></tr>'
            + "".join(rows) + "</table>")


def _example_rows(acts: list[dict[str, Any]], scale: float) -> str:
    out = []
    for a in acts:
        tokens, values = a.get("tokens") or [], a.get("values") or []
        peak = a.get("maxValueTokenIndex")
        top = float(a.get("maxValue") or 0.0)
        out.append(f'<div class="example"><span class="max num" title="peak activation">{top:.2f}</span>'
                   f'{example_html(tokens, values, scale, int(peak) if peak is not None else None)}</div>')
    return "".join(out)


def _intervals(acts: list[dict[str, Any]], scale: float) -> str:
    groups: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for a in acts:
        groups.setdefault((float(a.get("binMin") or 0.0), float(a.get("binMax") or 0.0)), []).append(a)
    parts = []
    for (lo, hi), members in sorted(groups.items(), key=lambda kv: -kv[0][1]):
        share = members[0].get("binContains")
        contains = ""
        if share is not None and float(share) >= 0:
            pct = 100 * float(share)
            contains = f" · {'under 0.1' if 0 < pct < 0.1 else f'{pct:.1f}'}% of activations"
        parts.append(f'<div class="bins">Interval {lo:.2f} – {hi:.2f}{contains}</div>'
                     + _example_rows(sorted(members, key=lambda a: -float(a.get("maxValue") or 0)), scale))
    return "".join(parts)


def _graphs(uses: list[GraphUse]) -> str:
    if not uses:
        return '<p class="muted small">No graph in the store has this feature.</p>'
    rows = []
    for u in uses:
        chips = "".join(f'<span class="chip" title="prompt token">{esc(token_label(t))}</span>' for t in u.tokens[:12])
        act = f" · activation up to {u.max_activation:.2f}" if u.max_activation is not None else ""
        rows.append(f'<div class="hit"><a href="{esc(u.url)}">{esc(u.slug)}</a> '
                    f'<span class="muted small">{u.nodes} node{"s" if u.nodes != 1 else ""}{act}</span>'
                    f'<div class="small">{esc(u.prompt or "")}</div><div>{chips}</div></div>')
    return "".join(rows)


def feature_page(feature: dict[str, Any], graphs: list[GraphUse], *, models: list[str] | None = None,
                 n_features: int | None = None, site: bool = True, inference: bool = True) -> str:
    """The feature page: header with density and links, then explanations, logits and histograms on the left,
    the top and interval examples on the right, and the graphs that use it. `n_features` hides "next" past
    the last feature; `site`: link the JSON API and the model and source pages (only `featuredb serve` has them)."""
    model, source, index = str(feature.get("modelId")), str(feature.get("layer")), int(feature.get("index") or 0)
    acts = feature.get("activations") or []
    tops = [a for a in acts if _is_top(a)]
    intervals = [a for a in acts if not _is_top(a)]
    scale = max([float(feature.get("maxActApprox") or 0.0)] + [float(a.get("maxValue") or 0.0) for a in acts])
    dens = density_text(feature.get("frac_nonzero"))
    exps = feature.get("explanations") or []
    label = exps[0].get("description") if exps else None
    here = feature_url(model, source, index)
    links = []
    if index > 0:
        links.append(f'<a href="{esc(feature_url(model, source, index - 1))}" rel="prev">← {index - 1}</a>')
    if n_features is None or index + 1 < n_features:
        links.append(f'<a href="{esc(feature_url(model, source, index + 1))}" rel="next">{index + 1} →</a>')
    if site:
        links.append(f'<a href="/api/feature{esc(here)}">JSON</a>')
    source_set = feature.get("sourceSet") or {}
    if source_set.get("creatorId") not in (None, "featuredb"):  # made here (ingest, synthetic): not on Neuronpedia
        links.append(f'<a href="{NEURONPEDIA}{esc(here)}" rel="noreferrer noopener" target="_blank">'
                     "on Neuronpedia</a>")
    set_desc = source_set.get("description") or ""
    crumbs = (f'<a href="/{esc(path_part(model))}">{esc(model)}</a> · '
              f'<a href="/{esc(path_part(model))}/{esc(path_part(source))}">{esc(source)}</a>') if site else \
        f"{esc(model)} · {esc(source)}"
    named = f"<b>{esc(label)}</b> · " if label else ""
    head = (f'<div class="muted small">{crumbs}{" · " + esc(set_desc) if set_desc else ""}</div>'
            f'<h1><span class="id">{esc(source)}/{index}</span></h1>'
            f'<div class="small">{named}density <span class="num">{esc(dens)}</span>'
            f' · max activation <span class="num">{scale:.3g}</span></div>'
            f'<div class="small">{" · ".join(links)}</div>')
    values = feature.get("freq_hist_data_bar_values") or []
    log_x = len(values) > 1 and float(values[0] or 0) > 0 and float(values[-1] or 0) / float(values[0]) > 100
    density_chart = histogram_svg(feature.get("freq_hist_data_bar_heights") or [], values,
                                  label="activation histogram", log_x=log_x)
    logit_chart = histogram_svg(feature.get("logits_hist_data_bar_heights") or [],
                                feature.get("logits_hist_data_bar_values") or [], label="logit histogram",
                                color="#2563eb")
    negative = logit_list(feature.get("neg_str") or [], feature.get("neg_values") or [], "neg")
    positive = logit_list(feature.get("pos_str") or [], feature.get("pos_values") or [], "pos")
    left = (f'<section class="card" id="explanations"><h2>Explanations</h2>{_explanations(exps)}</section>'
            f'<section class="card" id="logits"><h2>Logits</h2><div class="logits">'
            f'<div><div class="small muted">negative</div>{negative}</div>'
            f'<div><div class="small muted">positive</div>{positive}</div></div></section>'
            f'<section class="card" id="density"><h2>Activation density <span class="muted num">{esc(dens)}</span>'
            f'</h2>{density_chart}</section>'
            f'<section class="card" id="logit-histogram"><h2>Logit histogram</h2>{logit_chart}</section>'
            f'<section class="card" id="graphs"><h2>In graphs</h2>{_graphs(graphs)}</section>')
    right = (f'<section class="card" id="top-activations"><h2>Top activations <span class="muted small">'
             f'{len(tops)}</span></h2>{_example_rows(tops, scale) or "<p class=muted>No examples.</p>"}</section>')
    if intervals:
        right += (f'<section class="card" id="intervals"><h2>Interval examples <span class="muted small">'
                  f'{len(intervals)}</span></h2>{_intervals(intervals, scale)}</section>')
    body = f'{head}<div class="grid" style="margin-top:12px"><div>{left}</div><div>{right}</div></div>'
    return page(f"{source}/{index} {label or ''}".strip(), body, form=SearchForm(model=model), models=models,
                inference=inference)
