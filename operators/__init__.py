"""tickpool kernels and Bytewax operators: zero-copy columns, normalization, windows, models."""
