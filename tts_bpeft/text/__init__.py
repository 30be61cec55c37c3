"""OPT text models on the shared core: data, tokenizer, losses for the curvature, training, evaluation, HF Trainer.

Arrows point one way: recipes -> `tts_bpeft.text` -> the core (`tts_bpeft.lora`, `curvature`, `prior`).
`tts_bpeft.text.corpora` (offline English text from the gensim wheel) and `tts_bpeft.text.recipe` (what the
hydra recipes share) are imported on demand only.
"""

from .data import (
    GLUE_TASKS,
    Example,
    GlueTask,
    classification_loader,
    collate_classification,
    collate_lm,
    document_blocks,
    encode_examples,
    lm_loader,
    load_documents,
    load_glue,
    packed_blocks,
    read_documents,
    read_labelled_file,
)
from .fit import epoch_batches, fit
from .hf import PriorTrainer
from .losses import classification_loss, clm_likelihood, clm_loss, clm_sample_nll
from .metrics import accuracy, perplexity
from .models import (
    DEFAULT_TARGETS,
    add_lora_with_head,
    causal_lm_with_backbone,
    load_causal_lm,
    load_classifier,
    load_tokenizer,
    tiny_opt_config,
)
from .tokenizer import train_bpe_tokenizer

__all__ = [
    "DEFAULT_TARGETS", "GLUE_TASKS", "Example", "GlueTask", "PriorTrainer", "accuracy", "add_lora_with_head",
    "causal_lm_with_backbone", "classification_loader", "classification_loss", "clm_likelihood", "clm_loss",
    "clm_sample_nll", "collate_classification", "collate_lm", "document_blocks", "encode_examples",
    "epoch_batches", "fit",
    "lm_loader", "load_causal_lm", "load_classifier", "load_documents", "load_glue", "load_tokenizer",
    "packed_blocks", "perplexity", "read_documents", "read_labelled_file", "tiny_opt_config", "train_bpe_tokenizer",
]
