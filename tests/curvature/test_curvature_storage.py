"""The curvature file: round trip, reduced-precision storage, and every check naming what is wrong."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tts_bpeft import Curvature, add_lora, estimate_curvature
from tts_bpeft.curvature.storage import LayerCurvature


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(3, 5)
        self.dec = nn.Linear(5, 2)

    def forward(self, x):
        return self.dec(torch.tanh(self.enc(x)))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = add_lora(Net(), ["enc", "dec"], r=2)
    x, y = torch.randn(6, 4, 3), torch.randn(6, 4, 2)
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]

    def loss_fn(m, batch):
        return ((m(batch[0]) - batch[1]) ** 2).sum((1, 2))

    kfac = estimate_curvature(model, batches, loss_fn, description="six toy samples", progress=False)
    ewc = estimate_curvature(model, batches, loss_fn, method="ewc", progress=False)
    return model, kfac, ewc


def _tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_round_trip_keeps_values_and_metadata(setup, tmp_path):
    model, kfac, ewc = setup
    for curv in (kfac, ewc, kfac.compress(3)):
        path = curv.save(tmp_path / f"{curv.method}.safetensors")
        loaded = Curvature.load(path, model=model)
        for attr in ("method", "fisher", "kfac_approx", "samples", "mc_samples", "fingerprint", "description",
                     "version"):
            assert getattr(loaded, attr) == getattr(curv, attr), attr
        assert loaded.names == curv.names
        for name in curv.names:
            layer, back = curv.layers[name], loaded.layers[name]
            assert (back.kind, back.shape, back.tokens, back.fingerprint) == (
                layer.kind, layer.shape, layer.tokens, layer.fingerprint)
            for term, term_back in zip(layer.terms, back.terms):
                assert set(term) == set(term_back)
                for key in term:
                    assert torch.equal(term[key], term_back[key])
    assert kfac.description == "six toy samples" and kfac.samples == 6


def test_bfloat16_storage_loads_as_float32_close_to_the_original(setup, tmp_path):
    model, kfac, ewc = setup
    with pytest.raises(ValueError, match="compress them first"):
        kfac.save(tmp_path / "dense.safetensors", dtype=torch.bfloat16)
    eigen = kfac.compress(energy=1.0)  # every eigenpair: the same form, stored as V diag(vals) V^T
    for curv in (eigen, ewc):
        path = curv.save(tmp_path / f"{curv.method}_bf16.safetensors", dtype=torch.bfloat16)
        raw, _ = _tensors(path)
        assert all(v.dtype == torch.bfloat16 for v in raw.values())
        loaded = Curvature.load(path, model=model)
        for name in curv.names:
            for key, value in curv.term(name).items():
                got = loaded.term(name)[key]
                assert got.dtype == torch.float32
                torch.testing.assert_close(got, value, rtol=1e-2, atol=1e-2 * value.abs().max().item())
                assert not torch.equal(got, value)  # it really went through bf16


def test_bfloat16_eigenbasis_of_a_large_factor_stays_psd_where_the_dense_form_would_not(tmp_path):
    """Why dense factors are refused below float32: a 1024-wide covariance of correlated, non-centred inputs
    (like conv patches) rounded to bf16 has clearly negative eigenvalues; its eigenbasis in bf16 loads."""
    torch.manual_seed(0)
    d, n = 1024, 4000
    X = torch.randn(n, d) @ (torch.randn(d, d) * torch.logspace(0, -3, d)[None, :]) + 3.0
    A, G = X.T @ X / n, torch.eye(4)
    dense_bf16 = A.bfloat16().double()
    assert torch.linalg.eigvalsh(dense_bf16).min() < -1e-3 * A.diagonal().max()
    curv = Curvature("kfac", "empirical", "expand", {"w": LayerCurvature("linear", (4, d), [{"A": A, "G": G}], [n])}, n)
    path = curv.compress(energy=1.0).save(tmp_path / "big.safetensors", dtype=torch.bfloat16)
    back = Curvature.load(path).term("w")
    rebuilt = back["A_vecs"].double() @ torch.diag(back["A_vals"].double()) @ back["A_vecs"].double().T
    assert torch.linalg.eigvalsh(rebuilt).min() > -1e-6 * A.diagonal().max()
    dW = torch.randn(4, d, dtype=torch.float64)
    exact, stored = (dW * (dW @ A.double())).sum(), (dW * (dW @ rebuilt)).sum()
    assert abs(stored / exact - 1) < 1e-2


def test_layer_mismatches_name_the_layers(setup, tmp_path):
    model, kfac, _ = setup
    other = add_lora(Net(), ["enc"], r=2)  # adapts one layer only: "dec" is extra
    path = kfac.save(tmp_path / "k.safetensors")
    with pytest.raises(ValueError, match=r"does not adapt \['dec'\]"):
        Curvature.load(path, model=other)
    both = add_lora(nn.ModuleDict({"enc": nn.Linear(3, 5), "dec": nn.Linear(5, 2), "extra": nn.Linear(2, 2)}),
                    ["enc", "dec", "extra"], r=2)
    with pytest.raises(ValueError, match=r"without curvature \['extra'\]"):
        Curvature.load(path, model=both)
    wrong_shape = add_lora(nn.ModuleDict({"enc": nn.Linear(3, 5), "dec": nn.Linear(5, 3)}), ["enc", "dec"], r=2)
    with pytest.raises(ValueError, match=r"layer 'dec': curvature shape \(2, 5\), model weight \(3, 5\)"):
        Curvature.load(path, model=wrong_shape)


def test_fingerprint_mismatch_names_the_layer_and_can_be_downgraded(setup, tmp_path):
    model, kfac, _ = setup
    path = kfac.save(tmp_path / "k.safetensors")
    original = model.dec.base_layer.weight.detach().clone()
    with torch.no_grad():
        model.dec.base_layer.weight[0, 0] += 1.0
    try:
        with pytest.raises(ValueError, match=r"other base weights.*\['dec'\].*allow_fingerprint_mismatch"):
            Curvature.load(path, model=model)
        with pytest.warns(UserWarning, match=r"other base weights.*\['dec'\]"):
            Curvature.load(path, model=model, allow_fingerprint_mismatch=True)
    finally:
        with torch.no_grad():
            model.dec.base_layer.weight.copy_(original)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Curvature.load(path, model=model)  # restored weights: no warning


def _rewrite(path, out, change):
    tensors, meta = _tensors(path)
    change(tensors)
    save_file(tensors, str(out), metadata=meta)
    return out


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t["dec::0::G"].__setitem__((0, 0), float("nan")), r"layer 'dec'.*factor G has NaN or Inf"),
    (lambda t: t["enc::0::A"].__setitem__((0, 1), float("inf")), r"layer 'enc'.*factor A has NaN or Inf"),
    (lambda t: t["enc::0::A"].__setitem__((0, 1), t["enc::0::A"][0, 1] + 1.0), r"layer 'enc'.*not symmetric"),
    (lambda t: t.__setitem__("dec::0::G", torch.eye(3)), r"layer 'dec'.*factor G has shape \(3, 3\)"),
])
def test_corrupted_factors_are_refused_with_the_layer_named(setup, tmp_path, change, message):
    _, kfac, _ = setup
    path = kfac.save(tmp_path / "k.safetensors")
    bad = _rewrite(path, tmp_path / "bad.safetensors", change)
    with pytest.raises(ValueError, match=message):
        Curvature.load(bad)


def test_corrupted_ewc_diag_is_refused(setup, tmp_path):
    _, _, ewc = setup
    path = ewc.save(tmp_path / "e.safetensors")
    bad = _rewrite(path, tmp_path / "bad.safetensors", lambda t: t.__setitem__("enc::0::diag", torch.ones(5, 4)))
    with pytest.raises(ValueError, match=r"layer 'enc'.*diag has shape \(5, 4\), expected \(5, 3\)"):
        Curvature.load(bad)


def test_not_a_curvature_file(setup, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        Curvature.load(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="no tts_bpeft header"):
        Curvature.load(plain)
    with pytest.raises(FileNotFoundError):
        Curvature.load(tmp_path / "missing.safetensors")
    _, kfac, _ = setup
    path = kfac.save(tmp_path / "k.safetensors")
    tensors, meta = _tensors(path)
    tensors["ghost::0::A"] = torch.eye(2)
    save_file(tensors, str(tmp_path / "ghost.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="ghost::0::A belongs to no layer"):
        Curvature.load(tmp_path / "ghost.safetensors")
    head = json.loads(meta["tts_bpeft"])
    assert head["layers"]["enc"]["matrix_view"].startswith("W (out, in_flat)")
