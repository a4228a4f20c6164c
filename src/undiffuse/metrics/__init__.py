"""Measurements: Frechet distance, KID, precision/recall/density/coverage, the digits
evaluation feature space (``fd_digits``), a memorisation (near-copy) check, and the
evaluation suite that runs them all with their protocol (``evaluate``), and likelihoods in
bits/dim (probability-flow ODE and the DDPM variational bound, ``likelihood``)."""
from .copies import copy_pairs_grid, nearest_copies
from .features import digits_classifier, digits_features, fd_digits
from .frechet import frechet_distance, gaussian_stats
from .kid import kid, mmd2_unbiased
from .likelihood import (
           BIN_WIDTH_8BIT,
           bits_per_dim,
           ddpm_vlb,
           dequantize,
           discretized_gaussian_log_prob,
           ode_log_likelihood,
)
from .prdc import prdc

__all__ = ["frechet_distance", "gaussian_stats", "digits_features", "digits_classifier", "fd_digits",
           "nearest_copies", "copy_pairs_grid", "kid", "mmd2_unbiased", "prdc",
           "ode_log_likelihood", "bits_per_dim", "dequantize", "ddpm_vlb", "discretized_gaussian_log_prob",
           "BIN_WIDTH_8BIT"]
