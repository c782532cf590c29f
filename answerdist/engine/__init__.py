"""The scoring engine, layered as its data flows: tasks and text below, then settings, results, the
model (with the kernels beside it), scoring, and the run on top."""
