"""tts_bpeft: Bayesian parameter-efficient fine-tuning (LoRA + a Laplace prior from pre-training curvature).

The core (this package's top level, `lora`, `curvature`, `prior`, `selection`) knows nothing of any model family;
`tts_bpeft.styletts2` and `tts_bpeft.text` integrate StyleTTS 2 and OPT on top of it.
"""

from .curvature import (
    Categorical,
    Curvature,
    CurvatureMethod,
    Gaussian,
    Laplace,
    Likelihood,
    estimate_curvature,
    layer_targets,
)
from .lora import (
    LoraPlan,
    LoraTarget,
    add_lora,
    load_adapter,
    lora_targets,
    merged_state_dict,
    plan_lora,
    save_adapter,
)
from .prior import LaplacePrior, PriorKind, PriorScaling, load_prior
from .selection import StrengthSelection, Trial, select_strength
from .version import __version__

__all__ = [
    "Categorical", "Curvature", "CurvatureMethod", "Gaussian", "Laplace", "LaplacePrior", "Likelihood", "LoraPlan",
    "LoraTarget", "PriorKind", "PriorScaling", "StrengthSelection", "Trial", "__version__", "add_lora",
    "estimate_curvature", "layer_targets", "load_adapter", "load_prior", "lora_targets", "merged_state_dict",
    "plan_lora", "save_adapter", "select_strength",
]
