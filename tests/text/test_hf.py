"""The transformers Trainer integration adds exactly lam * penalty to the training loss."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainingArguments

from tts_bpeft import LaplacePrior, estimate_curvature
from tts_bpeft.text import (
    PriorTrainer,
    add_lora_with_head,
    clm_sample_nll,
    collate_classification,
    document_blocks,
    encode_examples,
    lm_loader,
    load_causal_lm,
    load_classifier,
    load_documents,
    load_glue,
    load_tokenizer,
)


@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory):
    tok = load_tokenizer(tiny["model"])
    lm = load_causal_lm(tiny["model"])
    blocks = document_blocks(tok, load_documents(files=tiny["root"] / "wiki.jsonl", max_documents=8), 24)
    curvature = estimate_curvature(lm, lm_loader(blocks, 1, 4), clm_sample_nll, method="kfac",
                                   targets=["q_proj", "v_proj"], progress=False)
    torch.manual_seed(0)
    model = add_lora_with_head(load_classifier(tiny["model"], 2, 1), r=4, alpha=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)  # B = 0 at init would make the penalty 0
    items = [{"input_ids": it["input_ids"], "labels": it["label"]} for it in
             encode_examples(tok, load_glue("sst2", file=tiny["root"] / "sst2_train.tsv"))]
    args = TrainingArguments(output_dir=str(tmp_path_factory.mktemp("trainer")), per_device_train_batch_size=4,
                             max_steps=2, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
                             learning_rate=1e-2, disable_tqdm=True)
    return {"model": model, "curvature": curvature, "items": items, "args": args}


def _collate(features):
    batch = collate_classification([{"input_ids": f["input_ids"], "label": f["labels"]} for f in features], 1)
    return batch


def test_compute_loss_adds_exactly_lam_times_penalty(setup):
    model, lam = setup["model"], 37.0
    prior = LaplacePrior(setup["curvature"], lam=lam)
    plain = Trainer(model=model, args=setup["args"], train_dataset=setup["items"], data_collator=_collate)
    with_prior = PriorTrainer(prior=prior, model=model, args=setup["args"], train_dataset=setup["items"],
                              data_collator=_collate)
    batch = _collate(setup["items"][:4])
    model.train()
    q = LaplacePrior(setup["curvature"], lam=1.0).penalty(model)
    assert q.item() > 0
    diff = with_prior.compute_loss(model, dict(batch)) - plain.compute_loss(model, dict(batch))
    torch.testing.assert_close(diff, lam * q, rtol=1e-5, atol=1e-6)
    # gradient accumulation: when the Trainer uses the loss as is (normalised over all accumulated items), the
    # penalty is split over the micro-batches; when it divides the loss itself, the penalty is added whole
    with_prior.current_gradient_accumulation_steps = 2
    for scaled, expected in ((True, lam * q / 2), (False, lam * q)):
        with_prior.loss_is_scaled_for_ga = scaled
        diff = with_prior.compute_loss(model, dict(batch)) - plain.compute_loss(model, dict(batch))
        torch.testing.assert_close(diff, expected, rtol=1e-5, atol=1e-6)
    with_prior.loss_is_scaled_for_ga = None
    model.eval()  # evaluation losses stay the data fit
    torch.testing.assert_close(with_prior.compute_loss(model, dict(batch)), plain.compute_loss(model, dict(batch)))


def test_trainer_trains_and_logs_the_penalty(setup):
    prior = LaplacePrior(setup["curvature"], lam=5.0)
    model = setup["model"]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = PriorTrainer(prior=prior, model=model, args=setup["args"], train_dataset=setup["items"],
                           data_collator=_collate)
    trainer.train()
    logged = [h["prior_penalty"] for h in trainer.state.log_history if "prior_penalty" in h]
    assert len(logged) == 2 and all(v > 0 for v in logged)
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("lora_A" in n for n in changed) and any("score" in n for n in changed)
