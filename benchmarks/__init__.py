"""tickpool benchmarks: each module prints markdown tables of medians; none asserts."""
