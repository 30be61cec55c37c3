"""Per-sample CLM losses for the curvature, and perplexity / accuracy against hand computations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tts_bpeft.text import (
    accuracy,
    clm_likelihood,
    clm_loss,
    clm_sample_nll,
    collate_classification,
    collate_lm,
    lm_loader,
    load_causal_lm,
    load_classifier,
    perplexity,
)


def _blocks():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(4, 300, (n,), generator=g) for n in (9, 5, 12, 3)]


def test_per_sample_nll_is_mean_over_each_samples_tokens(tiny):
    model = load_causal_lm(tiny["model"])
    batch = collate_lm(_blocks()[:2], pad_token_id=1)
    nll = clm_sample_nll(model, batch)
    for i, block in enumerate(_blocks()[:2]):
        logits = model(input_ids=block[None]).logits[0, :-1]
        expected = F.cross_entropy(logits, block[1:])  # padding of the other sample must not matter
        torch.testing.assert_close(nll[i], expected, atol=1e-5, rtol=1e-5)
    like = clm_likelihood(model, batch)
    torch.testing.assert_close(like.nll(), nll)
    assert like.sampled_nll(torch.Generator().manual_seed(0)).shape == (2,)
    hf = model(**batch).loss  # transformers' own token-mean loss
    torch.testing.assert_close(clm_loss(model, batch), hf, atol=1e-5, rtol=1e-5)


def test_perplexity_is_exp_of_token_mean_nll(tiny):
    model = load_causal_lm(tiny["model"])
    blocks = _blocks()
    total, count = 0.0, 0
    with torch.no_grad():
        for block in blocks:
            logp = torch.log_softmax(model(input_ids=block[None]).logits[0, :-1].double(), -1)
            total -= logp[torch.arange(block.shape[0] - 1), block[1:]].sum().item()
            count += block.shape[0] - 1
    result = perplexity(model, lm_loader(blocks, 1, batch_size=3), progress=False)
    assert result["tokens"] == count
    assert math.isclose(result["nll"], total / count, rel_tol=1e-5)
    assert math.isclose(result["perplexity"], math.exp(total / count), rel_tol=1e-5)


def test_accuracy_matches_argmax(tiny):
    model = load_classifier(tiny["model"], num_labels=3, pad_token_id=1)
    items = [{"input_ids": b, "label": i % 3} for i, b in enumerate(_blocks())]
    batch = collate_classification(items, 1)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = (logits.argmax(-1) == batch["labels"]).float().mean().item()
    result = accuracy(model, [collate_classification(items[:2], 1), collate_classification(items[2:], 1)],
                      progress=False)
    assert result["examples"] == 4 and math.isclose(result["accuracy"], expected)
    assert math.isclose(result["loss"], F.cross_entropy(logits, batch["labels"]).item(), rel_tol=1e-5)
