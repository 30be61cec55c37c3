"""Text data for OPT: causal-LM documents and blocks, and GLUE-style sentence(-pair) classification.

Causal LM. `load_documents` reads documents from local files (``.txt``: documents separated by blank lines,
or one per line; ``.jsonl``: one JSON object per line with a text field) or from a hub dataset through the
``datasets`` library (imported only then, e.g. ``wikitext``/``wikitext-2-raw-v1`` or the Pile). Documents
become token blocks in two ways:

- `document_blocks`: one block per document, its first ``block_size`` tokens (the curvature's samples:
  one document = one sample, as in the paper's 1024-token blocks at batch 1);
- `packed_blocks`: all documents joined by ``</s>`` and cut into equal blocks (fine-tuning and perplexity,
  as the transformers ``run_clm`` example does).

Classification. `load_glue` reads SST-2 / QQP / QNLI / MNLI from local ``.tsv``/``.csv``/``.jsonl`` files
(GLUE's own column names or the hub's, labels as ids or GLUE's strings) or the hub's ``glue`` subsets.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

PathLike = str | os.PathLike


# -- causal-LM documents ---------------------------------------------------------------------------
def read_documents(paths: PathLike | Sequence[PathLike], text_field: str = "text", split_on: str = "blank"
                   ) -> list[str]:
    """Documents from local files, in file order.

    ``.jsonl``/``.json`` lines: ``obj[text_field]``. ``.txt`` (any other suffix): with ``split_on="blank"``
    documents are separated by blank lines, with ``"line"`` every non-empty line is one, with ``"file"``
    each file is one. Empty documents are dropped.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if split_on not in ("blank", "line", "file"):
        raise ValueError(f"split_on must be 'blank', 'line' or 'file', got {split_on!r}")
    docs: list[str] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such text file")
        if path.suffix in (".jsonl", ".json"):
            with path.open(encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    obj = json.loads(line)
                    if text_field not in obj:
                        raise KeyError(f"{path}:{number}: no field {text_field!r} (fields: {sorted(obj)})")
                    docs.append(str(obj[text_field]))
            continue
        text = path.read_text(encoding="utf-8")
        if split_on == "file":
            parts = [text]
        elif split_on == "line":
            parts = text.splitlines()
        else:
            parts, current = [], []
            for line in text.splitlines():
                if line.strip():
                    current.append(line)
                elif current:
                    parts.append("\n".join(current))
                    current = []
            if current:
                parts.append("\n".join(current))
        docs.extend(p.strip() for p in parts)
    return [d for d in docs if d.strip()]


def _import_datasets():
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("loading a hub dataset needs the `datasets` package (pip install datasets); "
                          "offline, pass local files instead") from error
    return datasets


def load_documents(files: PathLike | Sequence[PathLike] | None = None, hub: str | None = None,
                   hub_name: str | None = None, split: str = "train", text_field: str = "text",
                   max_documents: int | None = None, skip_documents: int = 0, streaming: bool = False,
                   split_on: str = "blank", min_chars: int = 1) -> list[str]:
    """Documents from local `files` or the hub dataset `hub` (config `hub_name`, `split`), skipping the first
    `skip_documents` and keeping at most `max_documents` of those with at least `min_chars` characters.

    Exactly one of `files` and `hub` is given. ``streaming=True`` reads a hub dataset lazily (the Pile)."""
    if (files is None) == (hub is None):
        raise ValueError("give exactly one of files= (local text/jsonl files) and hub= (a hub dataset id)")
    if files is not None:
        source: Iterable[str] = read_documents(files, text_field, split_on)
    else:
        datasets = _import_datasets()
        dataset = datasets.load_dataset(hub, hub_name, split=split, streaming=streaming)
        source = (row[text_field] for row in dataset)
    docs: list[str] = []
    seen = 0
    for doc in source:
        if len(doc.strip()) < min_chars:
            continue
        seen += 1
        if seen <= skip_documents:
            continue
        docs.append(doc)
        if max_documents is not None and len(docs) >= max_documents:
            break
    if not docs:
        raise ValueError(f"no documents read from {files if files is not None else hub} "
                         f"(skip_documents={skip_documents}, min_chars={min_chars})")
    return docs


def document_blocks(tokenizer, documents: Sequence[str], block_size: int, min_tokens: int = 2) -> list[Tensor]:
    """One int64 block per document: its first `block_size` tokens (BOS included); shorter ones are dropped if
    they have fewer than `min_tokens` tokens (at least one predicted token needs 2)."""
    blocks = []
    for doc in documents:
        ids = tokenizer(doc, truncation=False)["input_ids"][:block_size]
        if len(ids) >= min_tokens:
            blocks.append(torch.tensor(ids, dtype=torch.long))
    return blocks


def packed_blocks(tokenizer, documents: Sequence[str], block_size: int) -> Tensor:
    """All documents tokenized (each with its BOS ``</s>``), joined and cut into (N, block_size) int64 blocks;
    the remainder shorter than a block is dropped."""
    ids: list[int] = []
    for doc in documents:
        ids.extend(tokenizer(doc, truncation=False)["input_ids"])
    n = len(ids) // block_size
    if n == 0:
        raise ValueError(f"{len(ids)} tokens make no block of {block_size}")
    return torch.tensor(ids[:n * block_size], dtype=torch.long).view(n, block_size)


def collate_lm(blocks: Sequence[Tensor], pad_token_id: int) -> dict[str, Tensor]:
    """Right-padded batch: ``input_ids``/``attention_mask``/``labels`` (B, T_max); labels are -100 on padding."""
    length = max(b.shape[0] for b in blocks)
    input_ids = torch.full((len(blocks), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(blocks), length), dtype=torch.long)
    for i, b in enumerate(blocks):
        input_ids[i, :b.shape[0]] = b
        mask[i, :b.shape[0]] = 1
    labels = input_ids.masked_fill(mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def lm_loader(blocks: Sequence[Tensor] | Tensor, pad_token_id: int, batch_size: int, shuffle: bool = False,
              seed: int = 0) -> DataLoader:
    """A DataLoader of `collate_lm` batches over blocks (a list of 1-D tensors or an (N, T) tensor)."""
    items = list(blocks.unbind(0)) if isinstance(blocks, Tensor) else list(blocks)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(items, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=lambda b: collate_lm(b, pad_token_id))


# -- GLUE-style classification ---------------------------------------------------------------------
@dataclass(frozen=True)
class GlueTask:
    """A sentence(-pair) classification task: text fields (hub names + aliases), labels, evaluation split."""

    name: str
    text_a: tuple[str, ...]
    text_b: tuple[str, ...] | None
    labels: tuple[str, ...]
    eval_split: str = "validation"
    label_columns: tuple[str, ...] = ("label",)

    @property
    def num_labels(self) -> int:
        return len(self.labels)


GLUE_TASKS: dict[str, GlueTask] = {
    "sst2": GlueTask("sst2", ("sentence",), None, ("negative", "positive")),
    "qqp": GlueTask("qqp", ("question1",), ("question2",), ("not_duplicate", "duplicate"),
                    label_columns=("label", "is_duplicate")),
    "qnli": GlueTask("qnli", ("question",), ("sentence",), ("entailment", "not_entailment")),
    "mnli": GlueTask("mnli", ("premise", "sentence1"), ("hypothesis", "sentence2"),
                     ("entailment", "neutral", "contradiction"), eval_split="validation_matched",
                     label_columns=("label", "gold_label")),
}


@dataclass(frozen=True)
class Example:
    """One labelled example: `text_a`, optional `text_b`, integer `label`."""

    text_a: str
    text_b: str | None
    label: int


def _glue_task(task: str) -> GlueTask:
    if task not in GLUE_TASKS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[task]


def _label_id(value: Any, task: GlueTask, where: str) -> int:
    text = str(value).strip()
    if text in task.labels:
        return task.labels.index(text)
    try:
        label = int(float(text))
    except ValueError:
        raise ValueError(f"{where}: label {value!r} is neither an id nor one of {task.labels}") from None
    if not 0 <= label < task.num_labels:
        raise ValueError(f"{where}: label {label} outside 0..{task.num_labels - 1}")
    return label


def _pick(row: dict[str, Any], names: tuple[str, ...], where: str) -> Any:
    for name in names:
        if name in row:
            return row[name]
    raise KeyError(f"{where}: none of the columns {names} (columns: {sorted(row)})")


def _rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t"
                                   else csv.QUOTE_MINIMAL))


def read_labelled_file(path: PathLike, task: str) -> list[Example]:
    """Examples of a GLUE `task` from a ``.tsv`` (GLUE's files), ``.csv`` or ``.jsonl`` file with a header."""
    spec, path = _glue_task(task), Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such labelled file")
    examples = []
    for number, row in enumerate(_rows(path), 2):
        where = f"{path}:{number}"
        label = _pick(row, spec.label_columns, where)
        if label in (None, "", "-"):  # unlabelled rows (GLUE test files, MNLI's '-')
            continue
        text_b = None if spec.text_b is None else str(_pick(row, spec.text_b, where))
        examples.append(Example(str(_pick(row, spec.text_a, where)), text_b, _label_id(label, spec, where)))
    if not examples:
        raise ValueError(f"{path}: no labelled examples")
    return examples


def load_glue(task: str, split: str = "train", file: PathLike | None = None, max_examples: int | None = None,
              seed: int = 0) -> list[Example]:
    """Examples of `task` (sst2, qqp, qnli, mnli) from a local `file`, else the hub's ``glue`` subset `split`
    (``"validation"`` means MNLI's ``validation_matched``). With `max_examples`, a seeded random subset."""
    spec = _glue_task(task)
    if file is not None:
        examples = read_labelled_file(file, task)
    else:
        datasets = _import_datasets()
        hub_split = spec.eval_split if split == "validation" else split
        rows = datasets.load_dataset("glue", task, split=hub_split)
        examples = [Example(str(r[spec.text_a[0]]), None if spec.text_b is None else str(r[spec.text_b[0]]),
                            int(r["label"])) for r in rows if int(r["label"]) >= 0]
    if max_examples is not None and max_examples < len(examples):
        examples = random.Random(seed).sample(examples, max_examples)
    return examples


def encode_examples(tokenizer, examples: Sequence[Example], max_length: int = 128) -> list[dict[str, Any]]:
    """Token ids (BOS + text_a [+ </s> + text_b], truncated to `max_length`) and labels, one dict per example."""
    out = []
    for ex in examples:
        enc = tokenizer(ex.text_a, ex.text_b, truncation=True, max_length=max_length)
        out.append({"input_ids": torch.tensor(enc["input_ids"], dtype=torch.long), "label": ex.label})
    return out


def collate_classification(items: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` (B, T_max) and ``labels`` (B,)."""
    batch = collate_lm([it["input_ids"] for it in items], pad_token_id)
    batch["labels"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
    return batch


def classification_loader(items: Sequence[dict[str, Any]], pad_token_id: int, batch_size: int,
                          shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader of `collate_classification` batches."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(list(items), batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=lambda b: collate_classification(b, pad_token_id))
