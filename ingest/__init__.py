"""ingest: turns (model, transcoders, corpus) into featuredb records."""
