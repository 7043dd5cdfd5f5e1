"""Feature labels written into the store (the baseline labeler)."""
