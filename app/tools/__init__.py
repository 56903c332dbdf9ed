"""Command-line tools beside the worker: the demo, a load generator and a tail of the outputs."""
