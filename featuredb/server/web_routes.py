"""The web UI's routes, in Neuronpedia's URL shapes: /search (every mode), /search-explanations/ and the feature
page /{modelId}/{source}/{index} (with `site`, also /, /{modelId} and /{modelId}/{source}). Pages are HTML built
from the store; a bad request is an HTML page saying why."""

from __future__ import annotations

import threading
from typing import Any, Callable

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from featuredb.errors import FeatureDBError, NotFoundError
from featuredb.store.graph_usage import GraphUse
from featuredb.identity import layer_of_source
from featuredb.search.api import MODES, search
from featuredb.search.filters import SearchFilters, parse_layers
from featuredb.search.inference import InferenceBackend, inference_search
from featuredb.server.errors import public_message
from featuredb.server.feature_page import feature_page
from featuredb.server.limits import MAX_INDEX, MAX_NAME_CHARS, MAX_QUERY_CHARS
from featuredb.server.page_layout import PAGE_HEADERS, SearchForm, esc, feature_url, page, path_part
from featuredb.server.search_page import MAX_LIMIT, search_page, store_summary
from featuredb.store.feature_store import FeatureStore
from featuredb.store.reads import source_ids
from featuredb.store.reads import max_feature_index
from featuredb.store.server_reads import browsable_models, source_counts, sources_by_layer

PAGE_MODES = (*MODES, "inference")
RESERVED = frozenset({"api", "graphs", "openapi.json", "docs", "redoc"})  # first path parts that are not models
GraphUses = Callable[[FeatureStore, str, str, int], list[GraphUse]]


def html(body: str, status: int = 200) -> HTMLResponse:
    """An HTML answer with the pages' headers (script-free CSP but for the search-box key)."""
    return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)


def _density(value: str) -> float | None:
    if not value.strip():
        return None
    try:
        d = float(value)
    except ValueError:
        raise FeatureDBError(f"max density {value[:20]!r}: expected a fraction such as 0.01") from None
    if not 0 <= d <= 1:
        raise FeatureDBError(f"max density {d}: expected a fraction between 0 and 1")
    return d


def _form(params: dict[str, str], mode: str | None = None) -> SearchForm:
    try:
        limit = int(params.get("limit") or 30)
    except ValueError:
        limit = 30
    return SearchForm(q=params.get("q", "").strip(), mode=mode or params.get("mode") or "auto",
                      model=params.get("model", ""), layers=params.get("layers", "").strip(),
                      max_density=params.get("max_density", "").strip(), limit=max(1, min(MAX_LIMIT, limit)))


class SourceSizes:
    """Features per source (for the feature page's "next" link), counted once per source and server."""

    def __init__(self) -> None:
        self._sizes: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def __call__(self, store: FeatureStore, model: str, source: str) -> int:
        """1 + the largest index of the source's features."""
        with self._lock:
            if (model, source) in self._sizes:
                return self._sizes[(model, source)]
        top = max_feature_index(store, model, source)
        size = top + 1 if top is not None else 0
        with self._lock:
            self._sizes[(model, source)] = size
        return size


def web_router(view: Callable[[], FeatureStore], graph_uses: GraphUses,
               backend: Callable[[], InferenceBackend] | None = None, *, site: bool = True,
               hidden: list[tuple[str, str]] | None = None) -> APIRouter:
    """The pages. `site`: `featuredb serve` also answers `/` (the search page), `/{modelId}` and
    `/{modelId}/{source}` and links the JSON API; `trace serve` keeps those paths for its graph view's files.
    `hidden`: paths an error message must not show (as the API's error answers hide them)."""
    router = APIRouter(include_in_schema=False)
    sizes = SourceSizes()
    can_infer = backend is not None

    def message(e: Exception) -> str:
        return public_message(str(e), hidden or [])

    def search_response(form: SearchForm) -> HTMLResponse:
        store = view()
        models = browsable_models(store)
        answer: dict[str, Any] = {"models": models, "can_infer": can_infer}
        if form.mode not in PAGE_MODES or (form.mode == "inference" and not can_infer):
            bad = form.mode
            form.mode = "auto"
            form.q = form.q or "?"
            allowed = [m for m in PAGE_MODES if can_infer or m != "inference"]
            return html(search_page(form, error=f"unknown search mode {bad[:20]!r}; expected one of "
                                                f"{', '.join(allowed)}", **answer), 400)
        if len(form.q) > MAX_QUERY_CHARS or len(form.model) > MAX_NAME_CHARS:
            form.q, form.model = form.q[:100] + "…", ""
            return html(search_page(form, error=f"the query is longer than {MAX_QUERY_CHARS} characters",
                                    **answer), 400)
        if not form.q:
            return html(search_page(form, summary=store_summary(source_counts(store)), **answer))
        try:
            density = _density(form.max_density)
            layers = parse_layers(form.layers)
            if form.mode == "inference":
                chosen = form.model or (models[0] if len(models) == 1 else "")
                if not chosen:
                    raise FeatureDBError("inference search runs one model: choose it in the model list")
                sources = None
                if layers:  # run only the transcoders of those layers
                    sources = [s for s in source_ids(store, chosen) if _layer_in(s, layers)]
                    if not sources:
                        raise NotFoundError(f"{chosen} has no source in layers {form.layers}")
                result = inference_search(store, chosen, form.q, sources=sources, limit=form.limit,
                                          density_threshold=density, backend=backend() if backend else None)
                return html(search_page(form, inference=result, **answer))
            filters = SearchFilters(model=form.model or None, layers=layers, max_density=density)
            hits = search(store, form.q, mode=form.mode, filters=filters, limit=form.limit)
            return html(search_page(form, hits=hits, **answer))
        except NotFoundError as e:
            return html(search_page(form, error=message(e), **answer), 404)
        except FeatureDBError as e:
            return html(search_page(form, error=message(e), **answer), 400)

    @router.api_route("/search", methods=["GET", "HEAD"])
    def search_view(request: Request) -> HTMLResponse:
        """Search features in any mode (?q=&mode=&model=&layers=&max_density=&limit=); without q, the start page."""
        return search_response(_form(dict(request.query_params)))

    @router.api_route("/search-explanations/", methods=["GET", "HEAD"])
    @router.api_route("/search-explanations", methods=["GET", "HEAD"])
    def search_explanations_view(request: Request) -> HTMLResponse:
        """Neuronpedia's explanation-search URL (?q=...&modelId=...), answered by the fused explanation search."""
        params = dict(request.query_params)
        params["model"] = params.get("modelId", "")
        return search_response(_form(params, mode="auto"))

    def reserved(first: str) -> None:
        if first in RESERVED:  # the API's own paths: its JSON error, not a page
            raise NotFoundError("no such route")

    def not_found(text: str) -> HTMLResponse:
        body = f'<h1>Not found</h1><p class="error">{esc(text)}</p>'
        return html(page("Not found", body, models=browsable_models(view()), inference=can_infer), 404)

    @router.api_route("/{modelId}/{layer}/{index:int}", methods=["GET", "HEAD"])
    def feature_view(modelId: str, layer: str, index: int) -> HTMLResponse:
        """A feature's dashboard (Neuronpedia's /{modelId}/{layer}/{index})."""
        reserved(modelId)
        store = view()
        if (len(modelId) > MAX_NAME_CHARS or len(layer) > MAX_NAME_CHARS or not 0 <= index <= MAX_INDEX
                or not (modelId + layer).isprintable()):
            return not_found("no such feature")
        try:
            feature: dict[str, Any] = store.get_feature(modelId, layer, index).model_dump(mode="json")
        except NotFoundError:
            return not_found(f"feature {modelId}/{layer}/{index} is not in the store")
        return html(feature_page(feature, graph_uses(store, modelId, layer, index), models=browsable_models(store),
                                 n_features=sizes(store, modelId, layer), site=site, inference=can_infer))

    if site:  # (under trace serve these paths are the graph view's files)
        @router.api_route("/{modelId}/{layer}/{index}", methods=["GET", "HEAD"])
        def not_a_feature(modelId: str, layer: str, index: str) -> HTMLResponse:
            """A feature URL whose index is not a number."""
            reserved(modelId)
            return not_found("a feature's index is a whole number, as in /MODEL/SOURCE/123")

        @router.api_route("/", methods=["GET", "HEAD"])
        def home_view() -> HTMLResponse:
            """The start page: the search page without a query."""
            return search_response(SearchForm())

        @router.api_route("/{modelId}/{layer}", methods=["GET", "HEAD"])
        def source_view(modelId: str, layer: str) -> HTMLResponse:
            """A source: how many features it has and links to its first features."""
            reserved(modelId)
            store = view()
            if len(modelId) > MAX_NAME_CHARS or len(layer) > MAX_NAME_CHARS:
                return not_found("no such source")
            n = sizes(store, modelId, layer)
            if not n:
                return not_found(f"source {modelId}/{layer} has no features in the store")
            first = "".join(f'<a class="chip" href="{esc(feature_url(modelId, layer, i))}">{i}</a>'
                            for i in range(min(n, 50)))
            body = (f'<div class="muted small"><a href="/{esc(path_part(modelId))}">{esc(modelId)}</a></div>'
                    f'<h1>{esc(layer)}</h1><p>{n:,} features (indexes 0 to {n - 1:,}).</p>'
                    f'<section class="card"><h2>First features</h2>{first}</section>')
            return html(page(layer, body, form=SearchForm(model=modelId), models=browsable_models(store),
                             inference=can_infer))

        @router.api_route("/{modelId}", methods=["GET", "HEAD"])
        def model_view(modelId: str) -> HTMLResponse:
            """A model: its sources, each linking to its page."""
            reserved(modelId)
            store = view()
            rows = sources_by_layer(store, modelId)
            if not rows:
                return not_found(f"model {modelId[:MAX_NAME_CHARS]} has no sources in the store")
            items = "".join(f'<div class="hit"><a class="id" href="/{esc(path_part(modelId))}/{esc(path_part(sid))}">'
                            f"{esc(sid)}</a></div>" for sid in rows)
            body = f'<h1>{esc(modelId)}</h1><section class="card"><h2>Sources</h2>{items}</section>'
            return html(page(modelId, body, form=SearchForm(model=modelId), models=browsable_models(store),
                             inference=can_infer))

    return router


def _layer_in(source: str, layers: tuple[int, ...]) -> bool:
    try:
        return layer_of_source(source) in layers
    except ValueError:
        return False
