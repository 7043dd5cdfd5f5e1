"""Pydantic models of Neuronpedia API responses that the client parses."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

from featuredb.models import Explanation, Feature


class ExplanationResult(Explanation):  # type: ignore[misc, valid-type]
    """One hit of /api/explanation/search*: the explanation and its feature (with a few activations)."""

    neuron: Optional[Feature] = None


class SearchExplanationsResponse(BaseModel):
    """Response of /api/explanation/search, search-all, search-model and search-release."""

    model_config = ConfigDict(extra="ignore")

    request: dict[str, Any] = {}
    results: list[ExplanationResult] = []
    resultsCount: int = 0
    hasMore: bool = False
    nextOffset: Optional[int] = None
