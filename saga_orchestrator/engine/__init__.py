"""Saga execution: the runner that drives one saga through its steps."""
