"""`Curvature`: an estimate of the pre-training Fisher per weight matrix, its file format and its checks.

Scaling (what the numbers mean). With per-sample losses ``l_n`` (n = 1..N, one utterance or one text) the
Fisher is ``F = 1/N sum_n E[grad l_n grad l_n^T]`` (empirical: real targets; mc: targets drawn from the
model, averaged over the draws). Per layer, in the matrix view ``W (out, in_flat)`` of `tts_bpeft.layers`:

- ``kfac``: ``F ~= A (x) G`` in torch's row-major vec (``vec(dW) = dW.flatten()``, block ``kron(G, A)``),
  ``A = (sum a a^T) / tokens`` (in_flat x in_flat) and ``G = (sum g g^T) / N`` (out x out); see
  `tts_bpeft.curvature.capture` for the sums of the ``expand`` and ``reduce`` variants. Then
  ``vec(dW)^T F vec(dW) = tr(dW^T G dW A)``.
- ``ewc``: ``diag`` (out x in_flat) = ``1/N sum_n grad_n ** 2`` with per-sample gradients ``grad_n``.
- ``ekfac`` (George et al. 2018): the eigenvectors ``A_basis`` = ``Q_A`` (in_flat x in_flat) and ``G_basis`` =
  ``Q_G`` (out x out) of a KFAC estimate's factors, and ``scales`` (out x in_flat) =
  ``1/N sum_n (Q_G^T grad_n Q_A) ** 2``; ``F ~= (Q_A (x) Q_G) diag(vec(scales)) (Q_A (x) Q_G)^T``. The
  scales are the exact Fisher diagonal in that basis, so ``sum(scales) = tr(F) = sum(ewc diag)``.

A layer holds a list of *terms* (their sum is the curvature): one after estimation; `weighted_sum` of KFAC
estimates keeps one Kronecker term per estimate, since a sum of Kronecker products is not one. A factor is
stored dense (``"A"``, ``"G"``) or, after `compress`, as a truncated eigenbasis (``"A_vecs"`` (d, k),
``"A_vals"`` (k,)).

File: one safetensors file, tensors ``"<layer>::<term>::<key>"``, metadata ``"tts_bpeft"`` = JSON header
(method, fisher, variant, sample and token counts, layer kinds and shapes, base-weight fingerprint, data
description, package version, and ``"checksums"``: the crc32 of every tensor's stored bytes and of the header
itself), so that a flipped bit anywhere is found when the file is read. A square factor or eigenvector matrix
whose columns each live in one of a few row sets (a ConvTranspose1d's block-diagonal ``A``, its eigenbasis) is
stored by those entries only (`BlockColumns`: ``"<layer>::<term>::<key>::values"``, ``"...::index"``,
``"...::block"``; the Kokoro and StyleTTS 2 first upsampler's 10240-wide ``A``, 419 MB dense, in a tenth),
exactly, and read back dense. Format 3 added these encodings; format 2 files are read as before.

Checks at load time (each failure names the file, the layer and the fix): the header is valid JSON with every
key; every tensor the header lists is present, of a floating dtype, finite, of its shape and unchanged
(checksum); counts are positive; diagonals (``diag``, ``scales``) and eigenvalues (``*_vals``) are
non-negative; dense factors are symmetric (``max |M - M^T| <= 1e-4 max |M|``) and positive semi-definite
within ``PSD_TOLERANCE``: ``M + PSD_TOLERANCE * max(diag M) I`` must have a Cholesky factor, i.e. the smallest
eigenvalue is above ``-PSD_TOLERANCE`` times the largest diagonal entry (itself at most the largest
eigenvalue). The Cholesky test (float64) costs a third of an eigendecomposition; a factor of more than
``PSD_FULL_SIZE`` rows is tested on a random principal submatrix of that size (a necessary condition, so a
big factor costs one 512 x 512 Cholesky); see ``benchmarks/bench_curvature_load.py`` for the time
the checks add. With a model, the file's base-weight
fingerprint must be present and match (``allow_fingerprint_mismatch=True`` is the explicit opt-out).

The class, its file format and the load-time checks stay one module (~430 lines, a fifth of it this
docstring): every check reads exactly what the writer stores, so format and checks change together.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from torch import Tensor, nn

from ..io import save_safetensors
from ..lora.targets import LoraTarget, lora_targets
from ..version import __version__
from .blocks import BlockColumns, block_eigh


@dataclass
class LayerCurvature:
    """The curvature of one weight matrix: `kind`, matrix `shape` (out, in_flat), terms and their token counts."""

    kind: str
    shape: tuple[int, int]
    terms: list[dict[str, Tensor]]
    tokens: list[int] = field(default_factory=list)
    fingerprint: str = ""  # of this layer's base weight (`layer_fingerprint`), to name changed layers


def fingerprint(targets: Mapping[str, LoraTarget]) -> str:
    """sha256 of the target names and their effective base weights (float32 bytes), 16 hex digits."""
    digest = hashlib.sha256()
    for name in sorted(targets):
        digest.update(name.encode())
        digest.update(targets[name].weight().detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def layer_fingerprint(target: LoraTarget) -> str:
    """sha256 of one target's effective base weight (float32 bytes), 16 hex digits."""
    weight = target.weight().detach().float().cpu().contiguous().numpy().tobytes()
    return hashlib.sha256(weight).hexdigest()[:16]


FORMAT = 3
READABLE_FORMATS = (2, 3)
PACKED_KEYS = ("A", "G", "A_vecs", "G_vecs", "A_basis", "G_basis")
"""Factors stored by their column supports (`BlockColumns`) where that is smaller."""
PSD_TOLERANCE = 1e-4
PSD_FULL_SIZE = 512
"""Dense factors may have eigenvalues down to ``-PSD_TOLERANCE * max(diag M)`` (float32 rounding of a Gram
matrix); anything more negative is refused."""
HEADER_KEYS = ("format", "method", "fisher", "kfac_approx", "samples", "mc_samples", "fingerprint", "description",
               "version", "layers", "checksums")
LAYER_KEYS = ("kind", "shape", "tokens", "fingerprint")
TERM_FACTORS = {"kfac": ((("A",), ("A_vals", "A_vecs")), (("G",), ("G_vals", "G_vecs"))), "ewc": ((("diag",),),),
                "ekfac": ((("A_basis",),), (("G_basis",),), (("scales",),))}
"""Per method, the factors a term holds: for each slot, the alternative key sets (dense, or eigenbasis)."""
REESTIMATE = "re-estimate it with estimate_curvature (recipes: estimate_curvature.py) or restore a good copy"


def checksum(value: Tensor) -> str:
    """crc32 of a tensor's stored bytes (its own dtype, C order), 8 hex digits."""
    raw = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return f"{zlib.crc32(raw):08x}"


def _header_checksum(head: Mapping) -> str:
    """crc32 of the header's canonical JSON without its own checksum entry."""
    rest = {k: v for k, v in head.items() if k != "checksums"}
    rest["checksums"] = {k: v for k, v in head.get("checksums", {}).items() if k != "header"}
    return f"{zlib.crc32(json.dumps(rest, sort_keys=True).encode()):08x}"


def _is_psd(value: Tensor) -> bool:
    """``value + PSD_TOLERANCE * max(diag) I`` has a Cholesky factor (see the module docstring); for factors of
    more than ``PSD_FULL_SIZE`` rows, the test runs on a principal submatrix of that many rows drawn at random
    (every principal submatrix of a PSD matrix is PSD, so this can only miss, never wrongly refuse)."""
    size = value.shape[0]
    if size > PSD_FULL_SIZE:
        rows = torch.randperm(size, generator=torch.Generator().manual_seed(size))[:PSD_FULL_SIZE]
        value = value[rows][:, rows]
    shift = PSD_TOLERANCE * max(float(value.diagonal().max()), 1e-30)
    shifted = value.double() + shift * torch.eye(value.shape[0], dtype=torch.float64)
    return torch.linalg.cholesky_ex(shifted).info.item() == 0


def _check_factor(where: str, key: str, value: Tensor, size: int) -> None:
    if not value.dtype.is_floating_point:
        raise ValueError(f"{where}: factor {key} has dtype {value.dtype}, not a floating type; {REESTIMATE}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{where}: factor {key} has NaN or Inf values; {REESTIMATE}")
    if key in ("diag", "scales", "A_vals", "G_vals") and value.numel() and float(value.min()) < 0:
        raise ValueError(f"{where}: factor {key} has negative entries (min {float(value.min()):.3g}); a Fisher "
                         f"diagonal or eigenvalue is >= 0; {REESTIMATE}")
    if key in ("A", "G", "A_basis", "G_basis"):
        if value.shape != (size, size):
            raise ValueError(f"{where}: factor {key} has shape {tuple(value.shape)}, expected ({size}, {size})")
        if key.endswith("_basis"):
            return
        asym = (value - value.T).abs().max().item()
        if asym > 1e-4 * max(value.abs().max().item(), 1e-30):
            raise ValueError(f"{where}: factor {key} is not symmetric (max |M - M^T| = {asym:.3g}); {REESTIMATE}")
        if float(value.diagonal().min()) < 0 or not _is_psd(value):
            raise ValueError(f"{where}: factor {key} is not positive semi-definite (an eigenvalue below "
                             f"-{PSD_TOLERANCE:g} x its largest diagonal entry); {REESTIMATE}")


def _read_header(path: Path, meta: Mapping[str, str]) -> dict:
    """The JSON header of a curvature file, its keys present and its own checksum verified."""
    if "tts_bpeft" not in meta:
        raise ValueError(f"{path}: no tts_bpeft header; not a curvature file written by this package")
    try:
        head = json.loads(meta["tts_bpeft"])
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: the tts_bpeft header is not valid JSON ({error}); the file is damaged: "
                         f"{REESTIMATE}") from error
    if not isinstance(head, dict):
        raise ValueError(f"{path}: the tts_bpeft header is not a JSON object; the file is damaged: {REESTIMATE}")
    if head.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{path}: curvature file format {head.get('format')!r}, this package reads formats "
                         f"{READABLE_FORMATS} "
                         f"(format 1 files carry no checksums); {REESTIMATE}")
    missing = [k for k in HEADER_KEYS if k not in head]
    if missing:
        raise ValueError(f"{path}: the header lacks {missing}; {REESTIMATE}")
    if head["checksums"].get("header") != _header_checksum(head):
        raise ValueError(f"{path}: the header does not match its checksum (edited or damaged after it was "
                         f"written); {REESTIMATE}")
    return head


def _energy_rank(ascending: Tensor, energy: float) -> int:
    """The fewest leading (largest) eigenvalues, of `ascending` (>= 0, in ascending order), whose sum is at
    least `energy` times the sum of all; at least 1."""
    total = float(ascending.sum())
    if total <= 0:
        return 1
    kept = ascending.flip(0).cumsum(0)
    return min(ascending.shape[0], int((kept < energy * total * (1 - 1e-12)).sum()) + 1)


class KroneckerFactors(NamedTuple):
    """KFAC's factors of one layer, ``F ~= input_cov (x) grad_cov`` (the module docstring's ``A`` and ``G``)."""

    input_cov: Tensor  # (in_flat, in_flat): the layer inputs' (patches') second moment per token
    grad_cov: Tensor  # (out, out): the output gradients' second moment per sample


@dataclass
class Curvature:
    """A curvature estimate (KFAC, EWC or EKFAC) for a set of named weight matrices; see the module docstring."""

    method: str
    fisher: str
    kfac_approx: str | None
    layers: dict[str, LayerCurvature]
    samples: int
    mc_samples: int = 1
    fingerprint: str = ""
    description: str = ""
    version: str = __version__

    @property
    def names(self) -> list[str]:
        return list(self.layers)

    def terms(self, name: str) -> list[dict[str, Tensor]]:
        """All terms of a layer (their sum is its curvature)."""
        return self.layers[name].terms

    def term(self, name: str) -> dict[str, Tensor]:
        """The stored tensors of a single-term layer: ``{"A", "G"}`` (kfac), ``{"diag"}`` (ewc) or
        ``{"A_basis", "G_basis", "scales"}`` (ekfac), in the matrix view."""
        terms = self.terms(name)
        if len(terms) != 1:
            raise ValueError(f"layer {name!r} has {len(terms)} Kronecker terms; use terms(name)")
        return terms[0]

    def kronecker_factors(self, name: str) -> KroneckerFactors:
        """The dense KFAC factors of a single-term layer (stored as ``"A"`` and ``"G"``)."""
        term = self.term(name)
        if "A" not in term or "G" not in term:
            raise ValueError(f"layer {name!r} of this {self.method} estimate has no dense Kronecker factors "
                             f"(it holds {sorted(term)})")
        return KroneckerFactors(term["A"], term["G"])

    # -- combining ---------------------------------------------------------------------------------
    def _check_compatible(self, other: Curvature) -> None:
        mine = (self.method, self.fisher, self.kfac_approx, {n: l.shape for n, l in self.layers.items()})
        theirs = (other.method, other.fisher, other.kfac_approx, {n: l.shape for n, l in other.layers.items()})
        if mine != theirs:
            raise ValueError("cannot combine curvature estimates of different methods, variants or layers")
        if self.fingerprint != other.fingerprint:
            raise ValueError("cannot pool curvature estimates computed on different base weights "
                             f"(fingerprints {self.fingerprint} and {other.fingerprint})")

    def __add__(self, other: Curvature) -> Curvature:
        """Pool two estimates over the union of their samples (as if estimated on all the data at once)."""
        self._check_compatible(other)
        if self.method == "ekfac":
            raise ValueError("EKFAC estimates cannot be pooled (each has its own eigenbasis): pool the KFAC "
                             "estimates, or estimate EKFAC on all the data at once")
        n1, n2 = self.samples * self.mc_samples, other.samples * other.mc_samples
        layers = {}
        for name, mine in self.layers.items():
            theirs = other.layers[name]
            if len(mine.terms) != 1 or len(theirs.terms) != 1 or not ({"A", "diag"} & set(mine.terms[0])):
                raise ValueError(f"layer {name!r}: only single-term, uncompressed estimates can be pooled")
            t1, t2 = mine.tokens[0], theirs.tokens[0]
            term = {}
            for key, value in mine.terms[0].items():
                w1, w2 = (t1, t2) if key == "A" else (n1, n2)
                term[key] = (value * w1 + theirs.terms[0][key] * w2) / (w1 + w2)
            layers[name] = replace(mine, terms=[term], tokens=[t1 + t2])
        samples = self.samples + other.samples
        return replace(self, layers=layers, samples=samples,
                       mc_samples=(n1 + n2) // samples if (n1 + n2) % samples == 0 else self.mc_samples)

    @staticmethod
    def weighted_sum(estimates: Sequence[Curvature], weights: Sequence[float]) -> Curvature:
        """``sum_i w_i F_i`` (e.g. the curvature of several earlier tasks). EWC diagonals add up; KFAC keeps
        one Kronecker term per estimate (``w_i A_i (x) G_i`` stored as ``A_i``, ``w_i G_i``), EKFAC one
        eigenbasis term per estimate (scales ``w_i S_i``)."""
        if len(estimates) != len(weights) or not estimates:
            raise ValueError("weighted_sum needs as many weights as estimates, and at least one")
        first = estimates[0]
        for other in estimates[1:]:
            if (other.method, set(other.layers)) != (first.method, set(first.layers)):
                raise ValueError("weighted_sum needs estimates of one method over the same layers")
        layers = {}
        for name, layer in first.layers.items():
            if first.method == "ewc":
                diag = sum(w * e.term(name)["diag"] for e, w in zip(estimates, weights))
                layers[name] = replace(layer, terms=[{"diag": diag}], tokens=[sum(e.layers[name].tokens[0]
                                                                                   for e in estimates)])
                continue
            terms, tokens = [], []
            for e, w in zip(estimates, weights):
                for term, count in zip(e.layers[name].terms, e.layers[name].tokens):
                    terms.append({k: (w * v if k in ("G", "G_vals", "scales") else v) for k, v in term.items()})
                    tokens.append(count)
            layers[name] = replace(layer, terms=terms, tokens=tokens)
        fingerprints = {e.fingerprint for e in estimates}
        return replace(first, layers=layers, samples=sum(e.samples for e in estimates),
                       fingerprint=first.fingerprint if len(fingerprints) == 1 else "",
                       description=" + ".join(f"{w:g} x [{e.description}]" for e, w in zip(estimates, weights)))

    def compress(self, rank: int | None = None, energy: float | None = None) -> Curvature:
        """Keep the leading eigenpairs of every KFAC factor (memory ``O(k d)`` instead of ``d^2``): the top
        `rank` of each, or (`energy`, a fraction in (0, 1]) the fewest whose eigenvalues sum to at least that
        fraction of the factor's trace (of the kept eigenpairs, for an estimate compressed before). The dropped
        eigenvalues are zero in the kept form, so a ``dW`` is charged less by its part along the dropped
        (low-curvature) directions; `benchmarks/curvature_storage.py` measures the effect on the penalty."""
        if self.method != "kfac":
            raise ValueError("only KFAC factors can be compressed to an eigenbasis")
        if (rank is None) == (energy is None):
            raise ValueError("compress needs either rank (eigenpairs per factor) or energy (a trace fraction)")
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"compress rank = {rank!r}: must be an integer >= 1")
        if energy is not None and not 0 < energy <= 1:
            raise ValueError(f"compress energy = {energy!r}: must be a trace fraction in (0, 1]")
        layers = {}
        for name, layer in self.layers.items():
            terms = []
            for term in layer.terms:
                new = {}
                for key in ("A", "G"):
                    if key in term:
                        vals, vecs = block_eigh(term[key].double())
                    else:  # already an eigenbasis (ascending eigenvalues): truncated further by the same rule
                        vals, vecs = term[key + "_vals"].double(), term[key + "_vecs"]
                    vals = vals.clamp(min=0)  # float rounding of a PSD matrix: tiny negative eigenvalues are 0
                    k = min(rank, vals.shape[0]) if rank is not None else _energy_rank(vals, energy)
                    new[key + "_vals"] = vals[-k:].float()
                    new[key + "_vecs"] = vecs[:, -k:].float().contiguous()
                terms.append(new)
            layers[name] = replace(layer, terms=terms)
        return replace(self, layers=layers)

    # -- files -------------------------------------------------------------------------------------
    def header(self) -> dict:
        return {
            "format": FORMAT, "method": self.method, "fisher": self.fisher, "kfac_approx": self.kfac_approx,
            "samples": self.samples, "mc_samples": self.mc_samples, "fingerprint": self.fingerprint,
            "description": self.description, "version": self.version,
            "layers": {n: {"kind": l.kind, "shape": list(l.shape), "tokens": l.tokens, "fingerprint": l.fingerprint,
                           "matrix_view": "W (out, in_flat), row-major vec; see tts_bpeft.layers"}
                       for n, l in self.layers.items()},
        }

    def save(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write one safetensors file atomically; `dtype` (e.g. torch.bfloat16) shrinks it.

        Dense KFAC factors are refused below float32: rounding a d x d covariance to 8 or 11 mantissa bits
        gives it negative eigenvalues of ~1e-3 of its diagonal (measured: -3.6 against a diagonal of 996 at
        d = 1024), which the PSD check at load time rightly refuses. Store them as an eigenbasis
        (`compress`; ``energy=1.0`` keeps every eigenpair): ``V diag(vals) V^T`` with ``vals >= 0`` stays
        positive semi-definite however ``V`` is rounded."""
        if dtype is not None and torch.finfo(dtype).bits < 32 and self.method == "kfac" and any(
                "A" in term or "G" in term for layer in self.layers.values() for term in layer.terms):
            raise ValueError(f"dense KFAC factors cannot be stored as {dtype}: rounding breaks their positive "
                             "semi-definiteness; compress them first (compress(energy=1.0) keeps every "
                             "eigenpair), or store float32")
        tensors = {}
        for name, layer in self.layers.items():
            for i, term in enumerate(layer.terms):
                for key, value in term.items():
                    value = (value.to(dtype) if dtype is not None else value).detach().cpu()
                    packed = BlockColumns.of(value) if key in PACKED_KEYS else None
                    if packed is None:
                        tensors[f"{name}::{i}::{key}"] = value
                    else:
                        tensors.update({f"{name}::{i}::{key}::{part}": part_value.contiguous()
                                        for part, part_value in packed._asdict().items()})
        head = self.header()
        head["checksums"] = {key: checksum(value) for key, value in tensors.items()}
        head["checksums"]["header"] = _header_checksum(head)
        return save_safetensors(tensors, path, metadata={"tts_bpeft": json.dumps(head)})

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | Mapping[str, nn.Module] | None = None,
             adapter_name: str = "default", allow_fingerprint_mismatch: bool = False) -> Curvature:
        """Read a curvature file (as float32) and check every factor; with `model`, check it fits the model's
        LoRA targets (names, shapes, base-weight fingerprint)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such curvature file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                stored = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as error:  # safetensors raises its own error types
            raise ValueError(f"{path}: not a readable safetensors file ({error}); {REESTIMATE}") from error
        head = _read_header(path, meta)
        layers = {}
        for name, info in head["layers"].items():
            where = f"{path}, layer {name!r}"
            missing = [k for k in LAYER_KEYS if k not in info]
            if missing:
                raise ValueError(f"{where}: the header lacks {missing}; {REESTIMATE}")
            tokens = info["tokens"]
            if not isinstance(tokens, list) or not tokens or not all(type(t) is int for t in tokens):
                raise ValueError(f"{where}: token counts {tokens!r} must be a list of integers, one per term; "
                                 f"{REESTIMATE}")
            layers[name] = LayerCurvature(info["kind"], tuple(info["shape"]), [{} for _ in tokens], list(tokens),
                                          info["fingerprint"])
        listed = head["checksums"]
        for key in stored:
            if key not in listed:
                name = key.split("::")[0]
                raise ValueError(f"{path}: tensor {key} belongs to no layer of the header"
                                 if name not in layers else f"{path}: tensor {key} is not listed in the header; "
                                 f"{REESTIMATE}")
        for key in listed:
            if key != "header" and key not in stored:
                raise ValueError(f"{path}, layer {key.split('::')[0]!r}: tensor {key} is missing from the file; "
                                 f"{REESTIMATE}")
        packed = {}
        for key, value in stored.items():
            fields = key.split("::")  # layer, term, factor and, for a block encoding, its part
            if len(fields) not in (3, 4) or fields[0] not in layers or not fields[1].isdigit() or \
                    int(fields[1]) >= len(layers[fields[0]].terms):
                raise ValueError(f"{path}: tensor {key} belongs to no layer of the header")
            name, index, factor, *part = fields
            if part:
                packed.setdefault((name, int(index), factor), {})[part[0]] = value
            else:
                layers[name].terms[int(index)][factor] = value
        for (name, index, factor), parts in packed.items():
            where = f"{path}, layer {name!r}: factor {factor}"
            if factor not in PACKED_KEYS or sorted(parts) != sorted(BlockColumns._fields):
                raise ValueError(f"{where} is stored in parts {sorted(parts)}, not a block encoding "
                                 f"{list(BlockColumns._fields)}; {REESTIMATE}")
            n_out, n_in = layers[name].shape
            try:
                layers[name].terms[index][factor] = BlockColumns(**parts).dense(n_in if factor[0] == "A" else n_out)
            except ValueError as error:
                raise ValueError(f"{where}: {error}; {REESTIMATE}") from error
        curvature = cls(head["method"], head["fisher"], head["kfac_approx"], layers, head["samples"],
                        head["mc_samples"], head["fingerprint"], head["description"], head["version"])
        curvature.check(str(path))
        for key, value in stored.items():
            if checksum(value) != listed[key]:
                raise ValueError(f"{path}, layer {key.split('::')[0]!r}: tensor {key} does not match its checksum "
                                 f"(the file was damaged after it was written); {REESTIMATE}")
        for layer in layers.values():
            layer.terms = [{k: v.float() for k, v in term.items()} for term in layer.terms]
        if model is not None:
            curvature.validate(lora_targets(model, adapter_name), allow_fingerprint_mismatch, str(path))
        return curvature

    # -- checks ------------------------------------------------------------------------------------
    def check(self, where: str = "curvature") -> None:
        """Counts positive; every layer's terms hold its method's factors, each floating, finite, of the right
        shape, non-negative (diagonals, eigenvalues), symmetric positive semi-definite (A, G); see the module
        docstring for the tolerances."""
        if self.method not in TERM_FACTORS:
            raise ValueError(f"{where}: unknown method {self.method!r} (one of {sorted(TERM_FACTORS)}); {REESTIMATE}")
        for what, count in (("samples", self.samples), ("mc_samples", self.mc_samples)):
            if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
                raise ValueError(f"{where}: {what} = {count!r}, must be a positive integer; {REESTIMATE}")
        for name, layer in self.layers.items():
            n_out, n_in = layer.shape
            least = 0 if self.method == "ewc" else 1  # KFAC's A is a mean over tokens; EWC counts none
            if len(layer.tokens) != len(layer.terms) or not all(t >= least for t in layer.tokens):
                raise ValueError(f"{where}, layer {name!r}: token counts {layer.tokens} must be >= {least}, one per "
                                 f"term ({len(layer.terms)}); {REESTIMATE}")
            for index, term in enumerate(layer.terms):
                absent = [" or ".join("+".join(keys) for keys in slot) for slot in TERM_FACTORS[self.method]
                          if not any(all(k in term for k in keys) for keys in slot)]
                if absent:
                    raise ValueError(f"{where}, layer {name!r}, term {index}: no factor {absent} for a "
                                     f"{self.method} estimate; {REESTIMATE}")
                for key, value in term.items():
                    size = n_in if key.startswith("A") else n_out
                    _check_factor(f"{where}, layer {name!r}", key, value, size)
                    if key in ("diag", "scales") and tuple(value.shape) != (n_out, n_in):
                        raise ValueError(f"{where}, layer {name!r}: {key} has shape {tuple(value.shape)}, "
                                         f"expected {(n_out, n_in)}")

    def validate(self, targets: Mapping[str, LoraTarget], allow_fingerprint_mismatch: bool = False,
                 where: str = "curvature") -> None:
        """The estimate covers exactly these targets, with their shapes, on the same base weights."""
        missing = [n for n in targets if n not in self.layers]
        extra = [n for n in self.layers if n not in targets]
        if missing or extra:
            raise ValueError(f"{where} does not match the model: layers without curvature {missing[:10]}, "
                             f"curvature for layers the model does not adapt {extra[:10]}")
        for name, target in targets.items():
            shape = tuple(target.weight().shape)
            if shape != self.layers[name].shape:
                raise ValueError(f"{where}, layer {name!r}: curvature shape {self.layers[name].shape}, "
                                 f"model weight {shape}")
        if not self.fingerprint:
            message = (f"{where} carries no base-weight fingerprint, so it cannot be checked against the model "
                       "(estimate_curvature records one)")
            if not allow_fingerprint_mismatch:
                raise ValueError(message + "; re-estimate it, or pass allow_fingerprint_mismatch=True to use it "
                                 "unchecked")
            warnings.warn(message, stacklevel=3)
        elif fingerprint(targets) != self.fingerprint:
            changed = [n for n, layer in self.layers.items()
                       if layer.fingerprint and layer.fingerprint != layer_fingerprint(targets[n])]
            message = (f"{where} was computed on other base weights (fingerprint {self.fingerprint}, "
                       f"model {fingerprint(targets)}; layers whose weights differ: {changed[:10] or 'unknown'})")
            if not allow_fingerprint_mismatch:
                raise ValueError(message + "; pass allow_fingerprint_mismatch=True to use it anyway")
            warnings.warn(message, stacklevel=3)
