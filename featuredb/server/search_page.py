"""The search page: the box, what the store holds, and hits of any search mode linked to their feature pages."""

from __future__ import annotations

from urllib.parse import urlencode

from featuredb.search.hits import SearchHit
from featuredb.search.inference import InferenceResult, TokenFeature
from featuredb.server.page_charts import token_label
from featuredb.server.page_layout import SEARCH_MODES, SearchForm, density_text, esc, feature_url, page, visible

MAX_LIMIT = 200

MODE_HELP = {
    "auto": "explanations by words and by meaning, fused",
    "text": "explanations containing the words (BM25)",
    "semantic": "explanations close in meaning (MiniLM embeddings)",
    "token": "features whose top examples peak on this token",
    "logit": "features that most promote this output token",
    "inference": "run the text through the model and show what fires, token by token",
}


def _density(d: float | None) -> str:
    return "" if d is None else f" · density {density_text(d)}"


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _hit(h: SearchHit) -> str:
    url = feature_url(h.model, h.source, h.index)
    chips = "".join(f'<span class="chip" title="top activating token">{esc(token_label(t))}</span>'
                    for t in h.top_tokens[:8])
    matched = ""
    if h.matched and h.matched != h.label:  # a token (shown as a chip, spaces visible) or an explanation
        shown = (f'<span class="chip">{esc(token_label(h.matched))}</span>' if len(h.matched.split()) <= 1
                 else esc(h.matched))
        matched = f'<div class="small muted">matched: {shown}</div>'

    return (f'<div class="hit"><a class="id" href="{esc(url)}">{esc(h.source)}/{h.index}</a> '
            f'<span class="label">{esc(h.label or "(no explanation)")}</span>'
            f'<div class="small muted">{esc(h.model)} · score {h.score:.3g}{_density(h.density)}</div>'
            f"{matched}<div>{chips}</div></div>")


def _feature_link(model: str, f: TokenFeature) -> str:
    return (f'<a class="id" href="{esc(feature_url(model, f.source, f.index))}">{esc(f.source)}/{f.index}</a> '
            f'<span class="num small">{f.activation:.2f}</span> {esc(f.label or "")}')


def _inference(r: InferenceResult) -> str:
    overall = "".join(f'<div class="hit">{_feature_link(r.model, f)}'
                      f'<div class="small muted">{esc(r.model)}{_density(f.density)}</div></div>' for f in r.overall)
    rows = "".join(f'<tr><td><span class="chip">{esc(token_label(t.token))}</span></td><td>'
                   + "<br>".join(_feature_link(r.model, f) for f in t.top_features) + "</td></tr>"
                   for t in r.by_token)
    return (f'<div class="grid"><section class="card"><h2>Strongest features over the text</h2>'
            f'{overall or "<p class=muted>Nothing fired.</p>"}</section>'
            f'<section class="card"><h2>By token</h2><table><tr><th>token</th><th>top features</th></tr>{rows}'
            f"</table></section></div>")


def store_summary(sources: list[tuple[str, str | None, int]]) -> str:
    """What the store holds: model, source set, number of sources (from the sources table)."""
    if not sources:
        return '<p class="muted">The store holds no sources yet: ingest or import some features first.</p>'
    rows = "".join(f"<tr><td>{esc(m)}</td><td>{esc(s or '')}</td><td class=num>{n}</td></tr>" for m, s, n in sources)
    return f"<table><tr><th>model</th><th>source set</th><th>sources</th></tr>{rows}</table>"


def _more(form: SearchForm, shown: int) -> str:
    """A link to the same search with twice as many results, when this page may have cut the list."""
    if shown < form.limit or form.limit >= MAX_LIMIT:
        return ""
    params = {"q": form.q, "mode": form.mode, "model": form.model, "layers": form.layers,
              "max_density": form.max_density, "limit": min(MAX_LIMIT, 2 * form.limit)}
    query = urlencode({k: v for k, v in params.items() if v})
    return f'<p><a href="/search?{esc(query)}" rel="next">show up to {min(MAX_LIMIT, 2 * form.limit)}</a></p>'


def search_page(form: SearchForm, *, models: list[str], hits: list[SearchHit] | None = None,
                inference: InferenceResult | None = None, error: str | None = None, summary: str = "",
                can_infer: bool = True) -> str:
    """The page for a search (or, without a query, the start page with the store's contents and the modes)."""
    if not form.q:
        modes = "".join(f"<tr><td><b>{esc(label)}</b></td><td>{esc(MODE_HELP[m])}</td></tr>"
                        for m, label in SEARCH_MODES if can_infer or m != "inference")
        body = (f'<h1>Search features</h1><p class="muted">Type a concept, a token or a text; press '
                f'<kbd>/</kbd> anywhere to come back to the box.</p><section class="card"><h2>Modes</h2>'
                f'<table>{modes}</table></section><section class="card"><h2>In this store</h2>{summary}</section>')
        return page("Search", body, form=form, models=models, autofocus=True, inference=can_infer)
    title = f'<h1>{esc(visible(form.q))}</h1><p class="muted small">{esc(MODE_HELP.get(form.mode, ""))}</p>'
    if error:
        body = f'{title}<p class="error">{esc(visible(error))}</p>'
    elif inference is not None:
        body = title + _inference(inference)
    else:
        found = hits or []
        cut = len(found) == form.limit
        listing = "".join(_hit(h) for h in found) or '<p class="muted">No feature matches.</p>'
        heading = f"the first {_plural(len(found), 'feature')}" if cut else _plural(len(found), "feature")
        body = (f'{title}<section class="card" id="hits"><h2>{heading}</h2>{listing}{_more(form, len(found))}'
                "</section>")
    return page(f"{form.q} · search", body, form=form, models=models, inference=can_infer)
