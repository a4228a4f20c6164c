"""Measurements: the Frechet distance between Gaussian fits of two feature sets, the digits
evaluation feature space (``fd_digits``) and a memorisation (near-copy) check."""
from .copies import copy_pairs_grid, nearest_copies
from .features import digits_classifier, digits_features, fd_digits
from .frechet import frechet_distance, gaussian_stats

__all__ = ["frechet_distance", "gaussian_stats", "digits_features", "digits_classifier", "fd_digits",
           "nearest_copies", "copy_pairs_grid"]
