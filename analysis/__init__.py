"""Measure what FORA does to a diffusion transformer: similarity, quality, speed, cache memory, interval sweeps."""
