"""goalkeeper.tools: the command-line interface and benchmarks."""
