"""wallet-bench: load generator and invariant checker."""
