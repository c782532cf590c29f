"""One checkpoint's run (any group size), the Python API over it, and the sweep over many."""
