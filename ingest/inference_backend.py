"""Inference backend for featuredb's search and server: the store's registered model and transcoders, cached."""

from __future__ import annotations

import threading

import torch

from featuredb.errors import FeatureDBError, NotFoundError
from featuredb.identity import source_id
from featuredb.search.inference import FeatureValues, SourceActivations, TextActivations
from featuredb.store.feature_store import FeatureStore
from featuredb.store.reads import model_settings, model_sources
from ingest.corpus import expects_bos
from ingest.harvest import Harvester
from ingest.model_loading import LoadedModel, load_model
from ingest.transcoder import Transcoder
from ingest.transcoder_formats import load_transcoders


class StoreInferenceBackend:
    """Loads each model and source set once (from the paths ingest recorded in `settings`) and runs texts."""

    def __init__(self, store: FeatureStore, device: str | None = None) -> None:
        self.store = store
        self.device = device
        self._models: dict[str, LoadedModel] = {}
        self._transcoders: dict[tuple[str, str], Transcoder] = {}
        self._lock = threading.Lock()

    def _model(self, model: str) -> LoadedModel:
        if model not in self._models:
            settings = model_settings(self.store, model)
            if settings is None or not settings.path:
                raise NotFoundError(f"model {model!r} has no local weights recorded (it was imported, not ingested)")
            self._models[model] = load_model(settings.path, device=self.device, dtype="float32", model_id=model)
        return self._models[model]

    def _sources(self, model: str, wanted: list[str] | None) -> list[tuple[str, Transcoder]]:
        out = []
        for row in model_sources(self.store, model):
            sid = row.source
            if wanted and sid not in wanted:
                continue
            if (model, sid) not in self._transcoders:
                if not row.set_settings.transcoders or row.settings.layer is None:
                    continue  # imported from Neuronpedia: no local transcoder to run
                tset = load_transcoders(list(row.set_settings.transcoders), [int(row.settings.layer)])
                for t in tset.transcoders:
                    self._transcoders[(model, source_id(t.layer, row.set_name))] = t
            if (model, sid) in self._transcoders:
                out.append((sid, self._transcoders[(model, sid)]))
        if wanted:
            missing = sorted(set(wanted) - {s for s, _ in out})
            if missing:
                raise NotFoundError(f"no runnable transcoder for source(s) {', '.join(missing)} of {model}")
        if not out:
            raise FeatureDBError(f"model {model!r} has no ingested transcoders to run")
        return out

    def _encode(self, model: str, text: str, sources: list[str] | None
                ) -> tuple[list[str], bool, list[tuple[str, torch.Tensor]]]:
        """Tokens, whether the first is BOS, and per source the [tokens, features] activations (lock held)."""
        lm = self._model(model)
        pairs = self._sources(model, sources)
        for _, t in pairs:
            t.to(lm.device, torch.float32)
        ids = lm.tokenizer(text).input_ids
        if not ids:
            raise FeatureDBError("the text has no tokens")
        bos = expects_bos(lm.tokenizer) and ids[0] == lm.tokenizer.bos_token_id
        harvester = Harvester.for_transcoders(lm.model, [t for _, t in pairs])
        try:
            captured = harvester.run(torch.tensor([ids], device=lm.device))
        finally:
            harvester.close()
        acts = [(sid, t.encode(captured[(t.layer, t.hook_in)][0].float())) for sid, t in pairs]
        return [lm.tokenizer.decode([i]) for i in ids], bos, acts

    def activations(self, model: str, text: str, sources: list[str] | None, top_k: int) -> TextActivations:
        """Top `top_k` features per token for each source."""
        with self._lock:
            tokens, bos, acts = self._encode(model, text, sources)
            result = []
            for sid, a in acts:
                vals, idx = a.topk(min(top_k, a.shape[-1]), dim=-1)
                result.append(SourceActivations(sid, [[(int(i), float(v)) for i, v in zip(ri, rv) if v > 0]
                                                      for ri, rv in zip(idx.tolist(), vals.tolist())]))
            return TextActivations(tokens, result, has_bos=bos)

    def feature_values(self, model: str, text: str, features: list[tuple[str, int]]) -> FeatureValues:
        """Every token's activation of each requested (source, index) feature."""
        with self._lock:
            sources = sorted({s for s, _ in features})
            tokens, bos, acts = self._encode(model, text, sources)
            by_source = dict(acts)
            values = {}
            for s, i in features:
                if not 0 <= i < by_source[s].shape[-1]:
                    raise NotFoundError(f"feature {model}/{s}/{i} is out of range (width {by_source[s].shape[-1]})")
                values[(s, i)] = [float(v) for v in by_source[s][:, i].tolist()]
            return FeatureValues(tokens, values, has_bos=bos)
