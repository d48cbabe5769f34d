"""Benchmarks that drive the whole app (they may import `app`; `analysis/` never does)."""
