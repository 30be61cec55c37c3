"""`estimate_curvature`: KFAC, EWC or EKFAC curvature of a model's targeted weights, from per-sample losses."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from tqdm.auto import tqdm

from ..lora.inject import plan_lora
from ..lora.targets import LoraTarget, as_module, lora_targets, weight_entries
from .blocks import block_eigh
from .capture import CurvatureCapture, LayerStatistics, statistics_dtype
from .likelihoods import Likelihood
from .options import CurvatureMethod, Fisher, KfacApprox, ModelMode
from .storage import Curvature, KroneckerFactors, LayerCurvature, fingerprint, layer_fingerprint

LossOutput = Tensor | Likelihood | Sequence[Likelihood]


def layer_targets(model: nn.Module | Mapping[str, nn.Module], target_modules: str | Iterable[str],
                  exclude: str | Iterable[str] | None = None) -> dict[str, LoraTarget]:
    """Targets for plain (not LoRA-wrapped) layers chosen with `tts_bpeft.plan_lora`'s rule."""
    root = as_module(model)
    modules = dict(root.named_modules())
    targets = {}
    for name in plan_lora(root, target_modules, exclude=exclude).names:
        for key, kind, param in weight_entries(name, modules[name]):
            targets[key] = LoraTarget(key, modules[name], kind, param)
    return targets


def _resolve_targets(model, targets, adapter_name: str) -> dict[str, LoraTarget]:
    if targets is None:
        found = lora_targets(model, adapter_name)
        if not found:
            raise ValueError(f"the model has no LoRA adapter {adapter_name!r}; add one with add_lora or pass "
                             "targets=<layer names or types>")
        return found
    if isinstance(targets, Mapping):
        return dict(targets)
    return layer_targets(model, targets)


def _gradient_carriers(layer: nn.Module, kind: str) -> tuple[list[Tensor], RemovableHandle | None]:
    """The leaves that make a layer's outputs require grad, and a hook to remove afterwards.

    A Linear or convolution gets a zero scalar added to its output by a forward hook: its gradient is a sum of
    the output gradient, and the layer's backward computes its input gradient only (a bias as carrier made
    oneDNN's convolution backward run its weight-gradient kernel too: 2-6x that backward's time). An LSTM (its
    own forward is replaced while measuring) carries gradients through its biases, or all its parameters.
    """
    if kind != "lstm":
        like = next(layer.parameters())
        carrier = torch.zeros((), dtype=like.dtype, device=like.device, requires_grad=True)
        return [carrier], layer.register_forward_hook(lambda module, args, output: output + carrier)
    own = dict(layer.named_parameters(recurse=False))
    return [p for name, p in own.items() if name.startswith("bias")] or list(own.values()), None


@contextlib.contextmanager
def _measuring_state(model: nn.Module, targets: Mapping[str, LoraTarget],
                     mode: ModelMode) -> Iterator[list[Tensor]]:
    """Adapters off, only the targeted layers' gradient carriers requiring grad, the chosen mode; all restored on exit.

    Yields the parameters to differentiate (gradients reach the targeted layers' outputs through them)."""
    modules = list(model.modules())
    training = [m.training for m in modules]
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    lora_layers = [m for m in modules if isinstance(m, LoraLayer)]
    merged = [m for m in lora_layers if m.merged]
    if merged:
        raise ValueError(f"{len(merged)} LoRA layer(s) are merged; unmerge them before measuring curvature")
    disabled = [m._disable_adapters for m in lora_layers]
    grads: list[tuple[Tensor, Tensor | None]] = []
    hooks: list[RemovableHandle] = []
    try:
        for m in lora_layers:
            m._disable_adapters = True
        for p, _ in requires_grad:
            p.requires_grad_(False)
        params = []
        for base, kind in {t.base_layer: t.kind for t in targets.values()}.items():
            carriers, hook = _gradient_carriers(base, kind)
            if hook is not None:
                hooks.append(hook)
            for p in carriers:
                grads.append((p, p.grad))
                p.grad = None
                p.requires_grad_(True)
                params.append(p)
        if mode != ModelMode.KEEP:
            model.train(mode == ModelMode.TRAIN)
        yield params
    finally:
        for m, flag in zip(modules, training):
            m.training = flag
        for p, flag in requires_grad:
            p.requires_grad_(flag)
        for m, flag in zip(lora_layers, disabled):
            m._disable_adapters = flag
        for p, grad in grads:
            p.grad = grad
        for hook in hooks:
            hook.remove()


def _per_sample(output: LossOutput) -> tuple[Tensor, list[Likelihood]]:
    """(per-sample losses with the real targets (B,), likelihood terms or [])."""
    if isinstance(output, Tensor):
        return output, []
    terms = [output] if isinstance(output, Likelihood) else list(output)
    if not terms or not all(isinstance(t, Likelihood) for t in terms):
        raise TypeError("loss_fn must return per-sample losses (B,) or Likelihood term(s)")
    return sum(t.nll() for t in terms), terms


def _all_reduce(stats: dict[str, LayerStatistics], samples: int, device: torch.device) -> int:
    """Sum the statistics of all processes (each saw a disjoint shard); returns the total sample count."""
    for layer in stats.values():
        n_out, n_in = layer.shape
        for name, shape in (("A_sum", (n_in, n_in)), ("G_sum", (n_out, n_out)), ("diag_sum", (n_out, n_in))):
            value = getattr(layer, name)
            value = torch.zeros(shape, dtype=layer.dtype) if value is None else value
            value = value.to(device)
            dist.all_reduce(value)
            setattr(layer, name, value.cpu())
        count = torch.tensor([layer.token_count()], dtype=torch.float64, device=device)
        dist.all_reduce(count)
        layer.tokens = int(count.item())
    total = torch.tensor([samples], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return int(total.item())


def estimate_curvature(
    model: nn.Module | Mapping[str, nn.Module],
    batches: Iterable[Any],
    loss_fn: Callable[[Any, Any], LossOutput],
    method: CurvatureMethod | str = "kfac",
    fisher: Fisher | str = "empirical",
    kfac_approx: KfacApprox | str = "expand",
    targets: Mapping[str, LoraTarget] | str | Iterable[str] | None = None,
    mc_samples: int = 1,
    adapter_name: str = "default",
    mode: ModelMode | str = "eval",
    seed: int = 0,
    description: str = "",
    distributed: bool | None = None,
    progress: bool = True,
) -> Curvature:
    """Estimate the Fisher of ``loss_fn``'s per-sample losses for the targeted weights (see `Curvature`).

    `method` is ``"kfac"``, ``"ewc"`` or ``"ekfac"`` (two passes over `batches`, which must then be re-iterable:
    KFAC factors with `kfac_approx`, then the per-sample gradients' second moments in their eigenbasis).
    `loss_fn(model, batch)` returns per-sample losses of shape (B,) (empirical Fisher only) or
    `Likelihood` term(s) whose NLLs sum to the per-sample loss (empirical or ``fisher="mc"`` with
    `mc_samples` target draws per sample). Samples in a batch must not interact (no train-mode BatchNorm):
    then B=1 and B=8 over the same samples give the same estimate. `targets` defaults to the model's LoRA
    targets (measured with the adapters disabled); names or layer types select plain layers instead.
    `mode` puts the model in eval (default) or train mode, or keeps it. With `torch.distributed`
    initialised, each process passes its own shard and all get the pooled estimate. The model is restored
    exactly (hooks, modes, requires_grad, adapters, the targeted weights' ``.grad``) even when an exception
    is raised. Each pass is back-propagated with ``backward()`` (reentrant checkpointing needs it), so leaf
    tensors of the batch that require grad receive ``.grad``.
    """
    method = CurvatureMethod.parse(method, "method")
    fisher = Fisher.parse(fisher, "fisher")
    kfac_approx = KfacApprox.parse(kfac_approx, "kfac_approx")
    mode = ModelMode.parse(mode, "mode")
    draws = mc_samples if fisher == "mc" else 1
    if draws < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    root = as_module(model)
    chosen = _resolve_targets(root, targets, adapter_name)
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    kfac, bases = None, None
    if method == "ekfac":
        if iter(batches) is batches:
            raise TypeError("method='ekfac' passes over the data twice: give a list or a DataLoader, not an iterator")
        kfac = estimate_curvature(model, batches, loss_fn, method="kfac", fisher=fisher, kfac_approx=kfac_approx,
                                  targets=chosen, mc_samples=mc_samples, adapter_name=adapter_name, mode=mode,
                                  seed=seed, description=description, distributed=distributed, progress=progress)
        bases = {n: kfac_eigenbasis(kfac.kronecker_factors(n), statistics_dtype(t.weight().dtype))
                 for n, t in chosen.items()}
    capture = CurvatureCapture(chosen, method, kfac_approx, bases)
    samples = _measure(model, root, chosen, batches, loss_fn, capture, fisher, draws, mode, seed, progress,
                       distributed)
    layers = _finish(capture, samples * draws, chosen, kfac, bases)
    return Curvature(method.value, fisher.value, kfac_approx.value if method != "ewc" else None, layers, samples,
                     draws,
                     fingerprint(chosen), description)


def kfac_eigenbasis(factors: KroneckerFactors, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """The eigenvectors ``(Q_A, Q_G)`` (columns) of the input and the gradient covariance, computed in float64,
    block by block where a factor is block diagonal (`block_eigh`: a ConvTranspose1d's ``A``), and kept in
    `dtype` (the statistics' precision: a float64 model needs float64 bases, as rounded bases leak the large
    per-position terms of a cancelling per-sample gradient into its small rotated entries)."""
    return tuple(block_eigh(f.double())[1].to(dtype).contiguous() for f in factors)


def _measure(model, root: nn.Module, chosen: Mapping[str, LoraTarget], batches: Iterable[Any], loss_fn,
             capture: CurvatureCapture, fisher: str, draws: int, mode: str, seed: int, progress: bool,
             distributed: bool) -> int:
    """One pass over `batches` with `capture` attached; returns the number of samples (pooled over processes)."""
    samples, generator = 0, None
    total = len(batches) if hasattr(batches, "__len__") else None
    with _measuring_state(root, chosen, mode) as params, capture:
        for batch in tqdm(batches, total=total, desc=f"curvature ({capture.method}, {fisher})",
                          disable=not progress):
            real, terms = _per_sample(loss_fn(model, batch))
            if real.dim() != 1:
                raise ValueError(f"loss_fn must return per-sample losses of shape (B,), got {tuple(real.shape)}")
            if fisher == "mc" and not terms:
                raise TypeError("fisher='mc' needs loss_fn to return Likelihood terms (Categorical, Gaussian, "
                                "Laplace) so that targets can be sampled from the model")
            if not real.requires_grad:
                raise ValueError("the loss does not depend on any targeted layer (no gradient path)")
            if generator is None and fisher == "mc":
                generator = torch.Generator(device=real.device).manual_seed(seed)
            for draw in range(draws):
                loss = real if fisher == "empirical" else sum(t.sampled_nll(generator) for t in terms)
                capture.begin_backward(real.shape[0])
                # backward() rather than autograd.grad(loss, params): the engine then runs every node, so a
                # reentrant torch.utils.checkpoint block (whose node has no params among its inputs) is
                # recomputed and its layers are seen. The params' .grad are discarded and restored on exit.
                torch.autograd.backward(loss.sum(), retain_graph=draw < draws - 1)
                for p in params:
                    p.grad = None
                capture.end_backward()
            samples += real.shape[0]
    if distributed:
        device = next(iter(params)).device if dist.get_backend() == "nccl" else torch.device("cpu")
        samples = _all_reduce(capture.stats, samples, device)
    return samples


def _finish(capture: CurvatureCapture, draws_total: int, targets: Mapping[str, LoraTarget],
            kfac: Curvature | None = None, bases: Mapping[str, tuple[Tensor, Tensor]] | None = None
            ) -> dict[str, LayerCurvature]:
    """Sums -> means: A over tokens, G and diag (EWC) or scales (EKFAC, with the `bases` of `kfac` and its
    token counts) over samples x draws, divided in place and kept as float32 (a float32 sum becomes its own mean:
    no second copy; a float64 model's sums are released once their float32 means exist)."""
    method, layers = capture.method, {}
    for name, s in capture.stats.items():
        tokens = s.token_count()
        if (method == "kfac" and (s.G_sum is None or tokens == 0)) or (method != "kfac" and s.diag_sum is None):
            raise ValueError(f"layer {name!r} received no gradient: is it used by loss_fn's loss?")
        if method == "kfac":
            term = {"A": s.A_sum.div_(tokens).float(), "G": s.G_sum.div_(draws_total).float()}
        elif method == "ewc":
            term = {"diag": s.diag_sum.div_(draws_total).float()}
        else:
            Q_A, Q_G = bases[name]
            term = {"A_basis": Q_A.float(), "G_basis": Q_G.float(), "scales": s.diag_sum.div_(draws_total).float()}
            tokens = kfac.layers[name].tokens[0]
        s.A_sum = s.G_sum = s.diag_sum = None
        layers[name] = LayerCurvature(s.kind, s.shape, [term], [tokens], layer_fingerprint(targets[name]))
    return layers
