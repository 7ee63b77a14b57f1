"""The ops, one module per family, each forward beside its hand-derived rule."""
