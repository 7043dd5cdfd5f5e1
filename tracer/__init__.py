"""tracer: labels attribution graphs and proposes supernodes from a featuredb store."""
