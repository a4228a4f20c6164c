"""Measurements. For now: the Frechet distance between Gaussian fits of two feature sets."""
from .frechet import frechet_distance, gaussian_stats

__all__ = ["frechet_distance", "gaussian_stats"]
