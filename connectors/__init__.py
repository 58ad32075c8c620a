"""tickpool connectors: Arrow sources and sinks for ticks, predictions, stats, dead letters."""
