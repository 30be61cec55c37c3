"""Curvature of the pre-training loss (KFAC, EWC, EKFAC) measured with hooks, in the matrix view of tts_bpeft.layers."""

from .estimate import estimate_curvature, layer_targets
from .likelihoods import Categorical, Gaussian, Laplace, Likelihood, PerSampleDraws, utterance_seed
from .options import CurvatureMethod, Fisher, KfacApprox, ModelMode
from .storage import Curvature, KroneckerFactors, LayerCurvature, fingerprint

__all__ = ["Categorical", "Curvature", "CurvatureMethod", "Fisher", "Gaussian", "KfacApprox", "KroneckerFactors",
           "Laplace", "LayerCurvature", "Likelihood", "ModelMode", "PerSampleDraws", "estimate_curvature",
           "fingerprint", "layer_targets", "utterance_seed"]
