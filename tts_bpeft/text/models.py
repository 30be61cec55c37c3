"""OPT models: tiny configs for offline runs, loading from the hub or a folder, LoRA with a trained head, and
moving an adapted backbone into a causal LM to measure forgetting.

Module names are the same in ``OPTForCausalLM`` and ``OPTForSequenceClassification``
(``model.decoder.layers.<i>.self_attn.q_proj``), so a curvature estimated on the causal LM serves the
classifier too (same base weights, same fingerprint).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from peft import PeftModel
from peft.utils.other import set_additional_trainable_modules
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    OPTConfig,
    PreTrainedModel,
)

from ..lora.inject import add_lora
from ..lora.io import merged_state_dict

DEFAULT_TARGETS = ("q_proj", "v_proj")
HEAD = "score"


def tiny_opt_config(vocab_size: int, hidden_size: int = 16, num_layers: int = 2, num_heads: int = 2,
                    ffn_dim: int = 32, max_positions: int = 64, dropout: float = 0.0) -> OPTConfig:
    """An OPT config of the given size with OPT's special-token ids (pad 1, bos = eos 2) and no dropout."""
    return OPTConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_attention_heads=num_heads, ffn_dim=ffn_dim,
                     num_hidden_layers=num_layers, max_position_embeddings=max_positions,
                     word_embed_proj_dim=hidden_size, dropout=dropout, attention_dropout=dropout,
                     activation_dropout=0.0, layerdrop=0.0, pad_token_id=1, bos_token_id=2, eos_token_id=2)


def load_tokenizer(name_or_path: str | os.PathLike):
    """``AutoTokenizer.from_pretrained`` (hub id such as ``facebook/opt-350m`` or a local folder), right padding."""
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer {name_or_path} has no pad token")
    return tokenizer


def load_causal_lm(name_or_path: str | os.PathLike) -> PreTrainedModel:
    """The pre-trained causal LM (hub id or local folder), float32, eval mode."""
    return AutoModelForCausalLM.from_pretrained(str(name_or_path)).eval()


def load_classifier(name_or_path: str | os.PathLike, num_labels: int, pad_token_id: int) -> PreTrainedModel:
    """``AutoModelForSequenceClassification`` on the pre-trained backbone, with a new `num_labels` head
    (``score``) that reads the last non-pad token."""
    return AutoModelForSequenceClassification.from_pretrained(str(name_or_path), num_labels=num_labels,
                                                              pad_token_id=pad_token_id)


def add_lora_with_head(model: PreTrainedModel, target_modules: Iterable[str] = DEFAULT_TARGETS, r: int = 16,
                       alpha: float = 32, dropout: float = 0.0, head: str | None = HEAD) -> PeftModel:
    """`tts_bpeft.add_lora` on a transformers model, plus a fully trained (and saved) `head` module.

    The head goes into peft's ``modules_to_save``: it trains, is saved by ``save_pretrained`` and restored by
    ``PeftModel.from_pretrained``; it is no LoRA target, so the prior does not regularise it (as in the paper).
    """
    peft_model = add_lora(model, list(target_modules), r=r, alpha=alpha, dropout=dropout)
    if head is not None:
        if not any(name == head or name.endswith("." + head) for name, _ in model.named_modules()):
            raise ValueError(f"the model has no head module {head!r}")
        config = peft_model.peft_config["default"]
        config.modules_to_save = [head]
        set_additional_trainable_modules(peft_model, config, model.config, "default")
    return peft_model


def causal_lm_with_backbone(adapted: nn.Module, base_lm: PreTrainedModel) -> PreTrainedModel:
    """`base_lm` (the pre-trained causal LM, changed in place) with the backbone of `adapted` (any OPT model
    with LoRA, e.g. a fine-tuned classifier) merged in: the LM perplexity then measures forgetting.

    Every ``model.*`` weight of `base_lm` must be found in the merged backbone; the LM head (tied to the
    embeddings) is the pre-trained one."""
    merged = {k: v for k, v in merged_state_dict(adapted).items() if k.startswith("model.")}
    own = {k for k in base_lm.state_dict() if k.startswith("model.")}
    missing = sorted(own - set(merged))
    if missing:
        raise ValueError(f"the adapted model lacks backbone weights {missing[:5]}")
    base_lm.load_state_dict({k: merged[k] for k in own}, strict=False)
    return base_lm.eval()
