"""Concept search over the store: BM25, MiniLM semantic, fused, token, logit and inference modes."""
