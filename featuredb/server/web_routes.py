"""The web UI's routes, in Neuronpedia's URL shapes: /search (every mode), /search-explanations/ and the feature
page /{modelId}/{source}/{index}. Pages are HTML built from the store; a bad request is an HTML page saying why."""

from __future__ import annotations

from typing import Any, Callable

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from featuredb.errors import FeatureDBError, NotFoundError
from featuredb.graph_usage import GraphUse
from featuredb.search.api import MODES, search
from featuredb.search.filters import SearchFilters
from featuredb.search.inference import InferenceBackend, inference_search
from featuredb.server.feature_page import feature_page
from featuredb.server.limits import MAX_INDEX, MAX_NAME_CHARS, MAX_QUERY_CHARS
from featuredb.server.page_layout import PAGE_HEADERS, esc, page
from featuredb.server.search_page import search_page, store_summary
from featuredb.store import FeatureStore

SEARCH_HITS = 30
PAGE_MODES = (*MODES, "inference")
GraphUses = Callable[[FeatureStore, str, str, int], list[GraphUse]]


def html(body: str, status: int = 200) -> HTMLResponse:
    """An HTML answer with the pages' headers (script-free CSP but for the search-box key)."""
    return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)


def _models(store: FeatureStore) -> list[str]:
    rows = store.con.execute('SELECT DISTINCT "modelId" FROM sources UNION SELECT DISTINCT id FROM models '
                             "ORDER BY 1").fetchall()
    return [r[0] for r in rows if r[0]]


def _summary(store: FeatureStore) -> str:
    rows = store.con.execute('SELECT "modelId", "setName", count(*) FROM sources GROUP BY ALL ORDER BY 1, 2').fetchall()
    return store_summary([(m, s, int(n)) for m, s, n in rows])


def web_router(view: Callable[[], FeatureStore], graph_uses: GraphUses,
               backend: Callable[[], InferenceBackend] | None = None, *, home: bool = True) -> APIRouter:
    """The pages; `home` also answers `/` with the search page (`trace serve` keeps `/` for its graph view)."""
    router = APIRouter(include_in_schema=False)

    def search_response(q: str, mode: str, model: str) -> HTMLResponse:
        store = view()
        models = _models(store)
        q = q.strip()
        if mode not in PAGE_MODES:
            return html(search_page(q or "?", "auto", model, models=models,
                                    error=f"unknown search mode {mode[:20]!r}; expected one of {', '.join(PAGE_MODES)}"),
                        400)
        if len(q) > MAX_QUERY_CHARS or len(model) > MAX_NAME_CHARS:
            return html(search_page(q[:100] + "…", mode, "", models=models,
                                    error=f"the query is longer than {MAX_QUERY_CHARS} characters"), 400)
        if not q:
            return html(search_page("", mode, model, models=models, summary=_summary(store)))
        try:
            if mode == "inference":
                chosen = model or (models[0] if len(models) == 1 else "")
                if not chosen:
                    raise FeatureDBError("inference search runs one model: choose it in the model list")
                if backend is None:
                    raise FeatureDBError("this server does not run models (inference search is off)")
                result = inference_search(store, chosen, q, limit=SEARCH_HITS, backend=backend())
                return html(search_page(q, mode, model, models=models, inference=result))
            hits = search(store, q, mode=mode, filters=SearchFilters(model=model or None), limit=SEARCH_HITS)
            return html(search_page(q, mode, model, models=models, hits=hits))
        except NotFoundError as e:
            return html(search_page(q, mode, model, models=models, error=str(e)), 404)
        except FeatureDBError as e:
            return html(search_page(q, mode, model, models=models, error=str(e)), 400)

    @router.api_route("/search", methods=["GET", "HEAD"])
    def search_view(q: str = "", mode: str = "auto", model: str = "") -> HTMLResponse:
        """Search features in any mode; without q, the start page."""
        return search_response(q, mode, model)

    @router.api_route("/search-explanations/", methods=["GET", "HEAD"])
    @router.api_route("/search-explanations", methods=["GET", "HEAD"])
    def search_explanations_view(q: str = "", modelId: str = "") -> HTMLResponse:
        """Neuronpedia's explanation-search URL (?q=...&modelId=...), answered by the fused explanation search."""
        return search_response(q, "auto", modelId)

    if home:
        @router.api_route("/", methods=["GET", "HEAD"])
        def home_view() -> HTMLResponse:
            """The start page: the search page without a query."""
            return search_response("", "auto", "")

    @router.api_route("/{modelId}/{layer}/{index:int}", methods=["GET", "HEAD"])
    def feature_view(modelId: str, layer: str, index: int) -> HTMLResponse:
        """A feature's dashboard (Neuronpedia's /{modelId}/{layer}/{index})."""
        store = view()
        models = _models(store)
        if (len(modelId) > MAX_NAME_CHARS or len(layer) > MAX_NAME_CHARS or not 0 <= index <= MAX_INDEX
                or not (modelId + layer).isprintable()):
            return html(_not_found(models, "no such feature"), 404)
        try:
            feature: dict[str, Any] = store.get_feature(modelId, layer, index).model_dump(mode="json")
        except NotFoundError:
            return html(_not_found(models, f"feature {modelId}/{layer}/{index} is not in the store"), 404)
        return html(feature_page(feature, graph_uses(store, modelId, layer, index), models=models))

    return router


def _not_found(models: list[str], message: str) -> str:
    return page("Not found", f'<h1>Not found</h1><p class="error">{esc(message)}</p>', models=models)
