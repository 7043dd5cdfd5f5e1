"""Neuronpedia API client (sync and async) with typed errors and retries."""

from featuredb.neuronpedia import errors
from featuredb.neuronpedia.client import AsyncNeuronpediaClient, NeuronpediaClient
from featuredb.neuronpedia.errors import *  # noqa: F401,F403  (the typed errors: errors.__all__ names them once)

__all__ = ["AsyncNeuronpediaClient", "NeuronpediaClient"]
__all__ += errors.__all__
