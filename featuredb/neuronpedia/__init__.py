"""Neuronpedia API client (sync and async) with typed errors and retries."""

from featuredb.neuronpedia.client import AsyncNeuronpediaClient, NeuronpediaClient
from featuredb.neuronpedia.errors import (
    InvalidResponseError,
    NeuronpediaError,
    NeuronpediaNotFoundError,
    RateLimitedError,
    ServerError,
    UnauthorizedError,
)

__all__ = [
    "AsyncNeuronpediaClient",
    "InvalidResponseError",
    "NeuronpediaClient",
    "NeuronpediaError",
    "NeuronpediaNotFoundError",
    "RateLimitedError",
    "ServerError",
    "UnauthorizedError",
]
