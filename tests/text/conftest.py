"""Fixtures for the OPT tests: a byte-level BPE tokenizer trained here, a tiny random OPT saved in the
transformers layout, and small local corpora / labelled files in the formats the recipes read."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import OPTForCausalLM

from tts_bpeft.text import tiny_opt_config, train_bpe_tokenizer

SUBJECTS = ["The river", "A small town", "The old library", "Our committee", "The northern army", "The museum",
            "A young painter", "The railway company", "The island", "The orchestra"]
VERBS = ["was founded in", "grew quickly during", "was described in", "declined after", "was rebuilt in",
         "became famous during", "was mapped in", "hosted a festival in"]
OBJECTS = ["the early nineteenth century", "the long winter of that year", "a report by the council",
           "the reign of the second king", "the years after the war", "a period of rapid growth"]
POSITIVE = ["a warm , funny and moving film", "the best performance of the year", "a delightful and clever story",
            "beautifully acted and wonderfully shot", "a charming , smart comedy", "gripping from start to finish"]
NEGATIVE = ["a dull , tedious mess", "the plot is silly and the acting is flat", "a boring and lifeless film",
            "painfully slow and badly written", "an empty , forgettable exercise", "clumsy , loud and tiresome"]


def wiki_documents(n: int, seed: int) -> list[str]:
    """`n` encyclopedia-like documents of 3-6 sentences (deterministic for a seed)."""
    rng = random.Random(seed)
    return [" ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."
                     for _ in range(rng.randint(3, 6))) for _ in range(n)]


def reviews(n: int, seed: int) -> list[tuple[str, int]]:
    """`n` balanced (sentence, label) movie-review pairs, 1 = positive."""
    rng = random.Random(seed)
    return [(rng.choice(POSITIVE if i % 2 else NEGATIVE) + " .", i % 2) for i in range(n)]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Folder with ``model/`` (tokenizer + tiny OPTForCausalLM), corpora and labelled files."""
    root = tmp_path_factory.mktemp("opt_tiny")
    wiki = wiki_documents(60, seed=0)
    held = wiki_documents(12, seed=1)
    sst = reviews(48, seed=2)
    tokenizer = train_bpe_tokenizer(wiki + [s for s, _ in sst], vocab_size=300, save_dir=root / "model")
    torch.manual_seed(0)
    model = OPTForCausalLM(tiny_opt_config(len(tokenizer), hidden_size=16, num_layers=2, num_heads=2, ffn_dim=32,
                                           max_positions=64))
    model.save_pretrained(str(root / "model"))
    with open(root / "wiki.jsonl", "w") as f:
        for doc in wiki:
            f.write(json.dumps({"text": doc, "meta": "x"}) + "\n")
    with open(root / "wiki_heldout.jsonl", "w") as f:
        for doc in held:
            f.write(json.dumps({"text": doc}) + "\n")
    (root / "news_train.txt").write_text("\n".join(wiki_documents(20, seed=3)) + "\n")
    (root / "news_dev.txt").write_text("\n".join(wiki_documents(6, seed=4)) + "\n")
    for name, rows in (("sst2_train.tsv", sst[:32]), ("sst2_dev.tsv", sst[32:])):
        (root / name).write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    return {"root": root, "model": root / "model"}
