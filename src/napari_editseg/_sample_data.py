"""Natural pictures that ship with scikit-image (no download), for File > Open Sample."""

from __future__ import annotations

from .cli import SAMPLES, sample_image


def _sample(name: str):
    return [(sample_image(name), {"name": name, "metadata": {"try": SAMPLES[name]}}, "image")]


def astronaut():
    return _sample("astronaut")


def coffee():
    return _sample("coffee")


def chelsea():
    return _sample("chelsea")


def shapes():
    """A shapes-world scene, for the trained demo model in benchmarks/shapes_world/checkpoint."""
    return _sample("shapes")
