"""The curvature estimate's options (see `tts_bpeft.curvature.estimate.estimate_curvature`)."""

from __future__ import annotations

from ..choices import Choice


class CurvatureMethod(Choice):
    """How the Fisher of a layer is approximated: Kronecker factors, their eigenbasis with a refitted
    diagonal, or a diagonal."""

    KFAC = "kfac"
    EKFAC = "ekfac"
    EWC = "ewc"


class Fisher(Choice):
    """Which Fisher: the gradients of the observed targets (empirical) or of targets drawn from the model (mc)."""

    EMPIRICAL = "empirical"
    MC = "mc"


class KfacApprox(Choice):
    """KFAC for weight sharing (tokens, conv positions, time steps): Eschenhagen et al.'s expand or reduce."""

    EXPAND = "expand"
    REDUCE = "reduce"


class ModelMode(Choice):
    """The mode the model is measured in: eval (dropout off; the default), train, or keep it as it is."""

    EVAL = "eval"
    TRAIN = "train"
    KEEP = "keep"
