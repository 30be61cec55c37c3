"""Curvature on a causal LM -> GLUE-style LoRA fine-tune with the prior -> evaluation, adapters round-trip."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from tts_bpeft import Curvature, LaplacePrior, add_lora, estimate_curvature, lora_targets
from tts_bpeft.text import (
    accuracy,
    add_lora_with_head,
    causal_lm_with_backbone,
    classification_loader,
    classification_loss,
    clm_likelihood,
    clm_loss,
    clm_sample_nll,
    document_blocks,
    encode_examples,
    fit,
    lm_loader,
    load_causal_lm,
    load_classifier,
    load_documents,
    load_glue,
    load_tokenizer,
    perplexity,
)

TARGETS = ["q_proj", "v_proj"]


@pytest.fixture(scope="module")
def curvatures(tiny):
    tok = load_tokenizer(tiny["model"])
    lm = load_causal_lm(tiny["model"])
    blocks = document_blocks(tok, load_documents(files=tiny["root"] / "wiki.jsonl", max_documents=24), 32)
    loader = lm_loader(blocks, tok.pad_token_id, 6)
    out = {m: estimate_curvature(lm, loader, clm_sample_nll, method=m, targets=TARGETS, progress=False)
           for m in ("kfac", "ewc")}
    out["kfac_mc"] = estimate_curvature(lm, loader, clm_likelihood, method="kfac", fisher="mc", targets=TARGETS,
                                        progress=False)
    return out


def test_curvature_on_opt_layers_and_file(curvatures, tiny, tmp_path):
    kfac = curvatures["kfac"]
    assert sorted(kfac.names) == sorted(f"model.decoder.layers.{i}.self_attn.{p}" for i in (0, 1) for p in TARGETS)
    assert kfac.samples == 24 and kfac.kronecker_factors(kfac.names[0]).input_cov.shape == (16, 16)
    assert curvatures["ewc"].term(kfac.names[0])["diag"].shape == (16, 16)
    assert curvatures["kfac_mc"].fisher == "mc"
    # the same file serves the classifier: same module names, same base weights (fingerprint)
    classifier = add_lora_with_head(load_classifier(tiny["model"], 2, 1), TARGETS, r=4, alpha=8)
    loaded = Curvature.load(kfac.save(tmp_path / "c.safetensors"), classifier)
    name = kfac.names[0]
    torch.testing.assert_close(loaded.kronecker_factors(name).grad_cov, kfac.kronecker_factors(name).grad_cov)


def _train_classifier(tiny, curvature, lam, out_dir, epochs=6):
    tok = load_tokenizer(tiny["model"])
    torch.manual_seed(0)
    model = add_lora_with_head(load_classifier(tiny["model"], 2, tok.pad_token_id), TARGETS, r=4, alpha=8)
    head_before = model.base_model.model.score.modules_to_save["default"].weight.detach().clone()
    base_before = {n: t.weight().clone() for n, t in lora_targets(model).items()}
    prior = None if lam == 0 else LaplacePrior(curvature, lam=lam, scaling="package")
    train = encode_examples(tok, load_glue("sst2", file=tiny["root"] / "sst2_train.tsv"))
    loader = classification_loader(train, tok.pad_token_id, 8, shuffle=True)
    history = fit(model, loader, classification_loss, out_dir, prior=prior, lr=3e-2, epochs=epochs,
                  progress=False)["history"]
    for name, target in lora_targets(model).items():
        assert torch.equal(target.weight(), base_before[name])  # base weights frozen
    head_after = model.base_model.model.score.modules_to_save["default"].weight
    assert not torch.equal(head_after, head_before)  # the head trains
    return model, history


def test_glue_finetune_with_prior_then_evaluate(tiny, curvatures, tmp_path):
    tok = load_tokenizer(tiny["model"])
    kfac = curvatures["kfac"]
    free, free_hist = _train_classifier(tiny, kfac, lam=0.0, out_dir=tmp_path / "free")
    tied, tied_hist = _train_classifier(tiny, kfac, lam=1e3, out_dir=tmp_path / "tied")
    q = LaplacePrior(kfac, lam=1.0)
    # the prior pulls dW towards 0 in the Fisher metric; the head is not regularised
    assert q.penalty(tied).item() < 0.2 * q.penalty(free).item()
    assert tied_hist[-1]["prior"] > 0 and free_hist[-1]["prior"] == 0
    assert free_hist[-1]["loss"] < free_hist[0]["loss"]
    dev = classification_loader(encode_examples(tok, load_glue("sst2", file=tiny["root"] / "sst2_dev.tsv")), 1, 8)
    assert accuracy(free, dev, progress=False)["accuracy"] >= 0.75  # learnable toy sentiment
    held = lm_loader(document_blocks(tok, load_documents(files=tiny["root"] / "wiki_heldout.jsonl"), 32), 1, 4)
    ppl = {name: perplexity(causal_lm_with_backbone(m, load_causal_lm(tiny["model"])), held, progress=False)
           for name, m in (("free", free), ("tied", tied))}
    base = perplexity(load_causal_lm(tiny["model"]), held, progress=False)
    assert abs(ppl["tied"]["nll"] - base["nll"]) < abs(ppl["free"]["nll"] - base["nll"])  # less forgetting


def test_adapter_round_trip_gives_identical_logits(tiny, tmp_path):
    tok = load_tokenizer(tiny["model"])
    torch.manual_seed(1)
    model = add_lora_with_head(load_classifier(tiny["model"], 2, 1), TARGETS, r=4, alpha=8)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
    model.save_pretrained(str(tmp_path / "adapter"))
    batch = classification_loader(encode_examples(tok, load_glue("sst2", file=tiny["root"] / "sst2_dev.tsv")), 1, 16)
    batch = next(iter(batch))
    model.eval()
    torch.manual_seed(99)  # a different random head in the fresh model: must be replaced by the saved one
    fresh = PeftModel.from_pretrained(load_classifier(tiny["model"], 2, 1), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = fresh(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(a, b)
    # the merged backbone under the pre-trained LM head equals the LoRA model's own causal-LM forward
    lm_lora = add_lora(load_causal_lm(tiny["model"]), TARGETS, r=4, alpha=8)
    src = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in lm_lora.named_parameters():
            if "lora_" in name:
                p.copy_(src[name])
        merged = causal_lm_with_backbone(model, load_causal_lm(tiny["model"]))
        ids = batch["input_ids"][:, :8]
        torch.testing.assert_close(merged(input_ids=ids).logits, lm_lora.eval()(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-4)


def test_clm_lora_finetune_reduces_target_loss(tiny, tmp_path):
    tok = load_tokenizer(tiny["model"])
    model = add_lora(load_causal_lm(tiny["model"]), TARGETS, r=4, alpha=8)
    docs = load_documents(files=tiny["root"] / "news_train.txt", split_on="line")
    loader = lm_loader(document_blocks(tok, docs, 32), tok.pad_token_id, 5, shuffle=True)
    before = perplexity(model, loader, progress=False)["nll"]
    history = fit(model, loader, clm_loss, tmp_path, prior=LaplacePrior(None, lam=1e-3, kind="l2sp"), lr=2e-2,
                  epochs=2, progress=False)["history"]
    assert len(history) == 2 and history[-1]["steps"] == 2 * len(loader)
    assert perplexity(model, loader, progress=False)["nll"] < before
