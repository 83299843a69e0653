"""Datasets: readers for public formats, the synthetic generator, `RecDataset` and the cached loader."""
