"""The local Neuronpedia-compatible HTTP server."""
