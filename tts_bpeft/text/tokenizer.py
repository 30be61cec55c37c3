"""A byte-level BPE tokenizer trained locally (offline), saved as a transformers ``PreTrainedTokenizerFast``.

The special tokens follow OPT's layout so that an ``OPTConfig`` with its default ids fits:
``<s>`` = 0, ``<pad>`` = 1 (``pad_token_id``), ``</s>`` = 2 (``bos_token_id`` = ``eos_token_id``, as in OPT,
whose tokenizer prepends ``</s>``), ``<unk>`` = 3. Encoding a text prepends ``</s>``; a pair is
``</s> A </s> B``, as OPT's GPT-2 tokenizer does with ``add_bos_token=True``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2,
                        save_dir: str | os.PathLike | None = None, model_max_length: int = int(1e30)
                        ) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (any iterable of strings) and wrap it for transformers.

    `vocab_size` counts the 256 byte symbols and the 4 special tokens, so it must be > 260. With `save_dir`,
    the tokenizer is written there (``tokenizer.json`` + configs) and reloads with
    ``AutoTokenizer.from_pretrained(save_dir)``.
    """
    if vocab_size <= 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed {256 + len(SPECIAL_TOKENS)} (bytes + special tokens)")
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A </s> $B:1", special_tokens=[("</s>", bos)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                      unk_token="<unk>", model_max_length=model_max_length, padding_side="right")
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        wrapped.save_pretrained(str(save_dir))
    return wrapped
