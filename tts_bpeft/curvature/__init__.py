"""Curvature of the pre-training loss (KFAC, EWC) measured with hooks, in the matrix view of tts_bpeft.layers."""

from .estimate import estimate_curvature, layer_targets
from .likelihoods import Categorical, Gaussian, Laplace, Likelihood, PerSampleDraws, utterance_seed
from .storage import Curvature, LayerCurvature, fingerprint

__all__ = ["Categorical", "Curvature", "Gaussian", "Laplace", "LayerCurvature", "Likelihood", "PerSampleDraws",
           "estimate_curvature", "fingerprint", "layer_targets", "utterance_seed"]
