"""Typed Neuronpedia API errors, each with a one-line message."""

from __future__ import annotations

from featuredb.errors import FeatureDBError

__all__ = ["InvalidResponseError", "NeuronpediaError", "NeuronpediaNotFoundError", "RateLimitedError", "ServerError",
           "UnauthorizedError"]


class NeuronpediaError(FeatureDBError):
    """Any failure talking to the Neuronpedia API."""


class UnauthorizedError(NeuronpediaError):
    """401/403: missing or wrong API key."""


class NeuronpediaNotFoundError(NeuronpediaError):
    """404: no such feature, graph or route."""


class RateLimitedError(NeuronpediaError):
    """429 after every retry."""


class ServerError(NeuronpediaError):
    """5xx or a timeout after every retry."""


class InvalidResponseError(NeuronpediaError):
    """The response was not the JSON that was expected."""
