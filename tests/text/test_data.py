"""Text data: documents from files and the hub, token blocks, GLUE files, the locally trained tokenizer."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from transformers import AutoTokenizer

from tts_bpeft.text import (
    collate_lm,
    document_blocks,
    load_documents,
    load_glue,
    load_tokenizer,
    packed_blocks,
    read_documents,
    read_labelled_file,
)


def test_read_documents_formats(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("first doc line one\nline two\n\n\nsecond doc\n\n")
    assert read_documents(txt) == ["first doc line one\nline two", "second doc"]
    assert read_documents(txt, split_on="line") == ["first doc line one", "line two", "second doc"]
    jl = tmp_path / "b.jsonl"
    jl.write_text(json.dumps({"body": "x y"}) + "\n\n" + json.dumps({"body": "z"}) + "\n")
    assert read_documents([txt, jl], text_field="body", split_on="file")[1:] == ["x y", "z"]
    with pytest.raises(KeyError, match="no field 'text'"):
        read_documents(jl)
    docs = load_documents(files=[jl], text_field="body", skip_documents=1)
    assert docs == ["z"]
    with pytest.raises(ValueError, match="exactly one"):
        load_documents()


def test_hub_paths_call_datasets(monkeypatch):
    calls = []

    def load_dataset(name, config=None, split=None, streaming=False):
        calls.append((name, config, split, streaming))
        if name == "glue":
            return [{"premise": "p", "hypothesis": "h", "label": 2}, {"premise": "q", "hypothesis": "i", "label": -1}]
        return [{"text": ""}, {"text": " = Title = "}, {"text": "body one"}, {"text": "body two"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    docs = load_documents(hub="wikitext", hub_name="wikitext-2-raw-v1", split="test", max_documents=1,
                          skip_documents=1)
    assert docs == ["body one"]
    examples = load_glue("mnli", "validation")
    assert [(e.text_a, e.text_b, e.label) for e in examples] == [("p", "h", 2)]  # unlabelled row dropped
    assert calls == [("wikitext", "wikitext-2-raw-v1", "test", False), ("glue", "mnli", "validation_matched", False)]


def test_glue_file_layouts(tmp_path):
    (tmp_path / "qnli.tsv").write_text("index\tquestion\tsentence\tlabel\n0\tWho?\tHim.\tnot_entailment\n"
                                       "1\tWhere?\tHere.\tentailment\n")
    assert [(e.text_a, e.text_b, e.label) for e in read_labelled_file(tmp_path / "qnli.tsv", "qnli")] == [
        ("Who?", "Him.", 1), ("Where?", "Here.", 0)]
    (tmp_path / "mnli.tsv").write_text("sentence1\tsentence2\tgold_label\na\tb\tneutral\nc\td\t-\n"
                                       "e\tf\tcontradiction\n")
    assert [e.label for e in read_labelled_file(tmp_path / "mnli.tsv", "mnli")] == [1, 2]
    (tmp_path / "qqp.csv").write_text('id,qid1,qid2,question1,question2,is_duplicate\n1,1,2,"a, b",c,1\n')
    assert read_labelled_file(tmp_path / "qqp.csv", "qqp")[0].text_a == "a, b"
    (tmp_path / "sst.jsonl").write_text(json.dumps({"sentence": "ok", "label": 1}) + "\n")
    assert load_glue("sst2", file=tmp_path / "sst.jsonl")[0].label == 1
    (tmp_path / "bad.tsv").write_text("sentence\tlabel\nok\t7\n")
    with pytest.raises(ValueError, match="outside"):
        read_labelled_file(tmp_path / "bad.tsv", "sst2")


def test_tokenizer_layout_and_reload(tiny):
    tok = load_tokenizer(tiny["model"])
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (1, 2, 2)
    ids = tok("The river was founded")["input_ids"]
    assert ids[0] == 2 and len(ids) < len("The river was founded")  # BOS + merged tokens
    pair = tok("a b", "c")["input_ids"]
    assert pair[0] == 2 and pair.count(2) == 2
    assert AutoTokenizer.from_pretrained(str(tiny["model"]))("The river")["input_ids"] == tok("The river")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "The river was founded"


def test_blocks(tiny):
    tok = load_tokenizer(tiny["model"])
    docs = ["The river was founded in the early nineteenth century.", "The island.", "x"]
    blocks = document_blocks(tok, docs, block_size=6)
    assert [b.shape[0] for b in blocks] == [6, min(6, len(tok(docs[1])["input_ids"])), 2]
    assert blocks[0].tolist() == tok(docs[0])["input_ids"][:6]
    packed = packed_blocks(tok, docs, 4)
    joined = sum((tok(d)["input_ids"] for d in docs), [])
    assert packed.shape == (len(joined) // 4, 4) and packed.flatten().tolist() == joined[:packed.numel()]
    batch = collate_lm(blocks, tok.pad_token_id)
    assert batch["input_ids"].shape == (3, 6)
    assert torch.equal(batch["labels"][2], torch.tensor([blocks[2][0], blocks[2][1], -100, -100, -100, -100]))
    assert batch["attention_mask"].sum().item() == sum(b.shape[0] for b in blocks)
