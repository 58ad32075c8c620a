"""tickpool runtime: buffer pool, configuration, statistics, flow assembly, command line."""
