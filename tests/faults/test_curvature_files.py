"""Issue 17, item 6: a curvature file that is damaged or edited is refused when it is read, naming the file,
the layer and the fix; nothing wrong reaches the first penalty.

The files are damaged the way disks and hostile users do it: a bit flipped in the stored bytes, a tensor
negated or replaced, a header value changed (and, to get past the header checksum, the checksum recomputed
here from the documented format: crc32 of the header's sorted-key JSON without its ``"header"`` entry)."""

from __future__ import annotations

import json
import struct
import zlib
from collections import OrderedDict

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tts_bpeft import Curvature, LaplacePrior, add_lora, estimate_curvature

FIX = "re-estimate"


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(enc=nn.Linear(3, 5), act=nn.Tanh(), dec=nn.Linear(5, 2)))
    model = add_lora(net, ["enc", "dec"], r=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # a non-zero weight shift, so that the penalty is not 0
    x, y = torch.randn(6, 4, 3), torch.randn(6, 4, 2)

    def loss_fn(m, batch):
        return ((m(batch[0]) - batch[1]) ** 2).sum((1, 2))

    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    kfac = estimate_curvature(model, batches, loss_fn, progress=False)
    ewc = estimate_curvature(model, batches, loss_fn, method="ewc", progress=False)
    return model, kfac, ewc


def read(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["tts_bpeft"])


def write(path, tensors, head, resign: bool):
    """Save `tensors` with header `head`; with `resign`, recompute the header checksum (and those of the
    tensors) as a careful forger would."""
    head = json.loads(json.dumps(head))
    if resign:
        sums = head.get("checksums", {})
        for key, value in tensors.items():
            raw = value.contiguous().reshape(-1).view(torch.uint8).numpy()
            sums[key] = f"{zlib.crc32(raw):08x}"
        sums.pop("header", None)
        head["checksums"] = sums
        sums["header"] = f"{zlib.crc32(json.dumps(head, sort_keys=True).encode()):08x}"
    save_file(tensors, str(path), metadata={"tts_bpeft": json.dumps(head)})
    return path


def flip_bit(path, key, index, bit):
    """Flip one bit of element `index` (float32) of tensor `key` in the file's bytes."""
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    begin = json.loads(data[8:8 + length])[key]["data_offsets"][0] + 8 + length
    data[begin + 4 * index + bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))


def test_a_flipped_exponent_bit_is_refused_not_a_penalty_of_1e28(setup, tmp_path):
    model, kfac, _ = setup
    path = kfac.save(tmp_path / "k.safetensors")
    good = LaplacePrior(Curvature.load(path, model), lam=1.0, scaling="package").penalty(model)
    flip_bit(path, "enc::0::A", 4, 30)  # the diagonal entry (1, 1) times 2**128: finite, symmetric, still PSD
    tensors, _ = read(path)
    assert torch.isfinite(tensors["enc::0::A"]).all()  # no NaN check can find it
    with pytest.raises(ValueError, match=rf"{path}.*layer 'enc'.*enc::0::A does not match its checksum.*{FIX}"):
        Curvature.load(path, model)
    assert 0 < float(good) < 1e3


@pytest.fixture
def kfac_file(setup, tmp_path):
    """The tensors and the header of the KFAC estimate's file, to edit."""
    return read(setup[1].save(tmp_path / "k.safetensors"))


def refused(tmp_path, tensors, head, match, resign=True, name="bad", model=None):
    """Write the edited file; loading it must raise a ValueError that names the file and matches `match`."""
    path = write(tmp_path / f"{name}.safetensors", tensors, head, resign)
    with pytest.raises(ValueError, match=match) as error:
        Curvature.load(path, model)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("resign", [False, True])
def test_a_negated_factor_is_not_positive_semi_definite(kfac_file, tmp_path, resign):
    tensors, head = kfac_file
    tensors["dec::0::G"] = -tensors["dec::0::G"]
    refused(tmp_path, tensors, head, rf", layer 'dec'.*G is not positive semi-definite.*{FIX}", resign)


def test_an_indefinite_symmetric_factor_with_a_positive_diagonal_is_refused(kfac_file, tmp_path):
    tensors, head = kfac_file
    A = tensors["enc::0::A"].clone()
    A[0, 1] = A[1, 0] = 2 * (A[0, 0] * A[1, 1]).sqrt()  # a 2 x 2 minor with a negative determinant
    assert float(torch.linalg.eigvalsh(A.double()).min()) < -0.1 * float(A.diagonal().max())
    tensors["enc::0::A"] = A
    refused(tmp_path, tensors, head, r"layer 'enc'.*A is not positive semi-definite")


def test_a_negative_ewc_diagonal_entry_is_refused(setup, tmp_path):
    tensors, head = read(setup[2].save(tmp_path / "e.safetensors"))
    tensors["enc::0::diag"][2, 1] = -1e-3
    refused(tmp_path, tensors, head, rf", layer 'enc'.*diag has negative entries.*{FIX}")


def test_integer_factors_are_refused(kfac_file, tmp_path):
    tensors, head = kfac_file
    tensors["enc::0::A"] = torch.zeros(3, 3, dtype=torch.int64)
    refused(tmp_path, tensors, head, r"layer 'enc'.*A has dtype torch.int64, not a floating type")


@pytest.mark.parametrize("samples", [0, -5])
def test_non_positive_sample_counts_are_refused(kfac_file, tmp_path, samples):
    tensors, head = kfac_file
    head["samples"] = samples
    refused(tmp_path, tensors, head, rf": the header does not match its checksum.*{FIX}", resign=False)
    refused(tmp_path, tensors, head, rf": samples = {samples}, must be a positive integer", name="forged")


def test_changed_token_counts_are_refused(kfac_file, tmp_path):
    tensors, head = kfac_file
    head["layers"]["dec"]["tokens"] = [head["layers"]["dec"]["tokens"][0] + 1]  # plausible, but not what was counted
    refused(tmp_path, tensors, head, "header does not match its checksum", resign=False)
    head["layers"]["dec"]["tokens"] = [0]
    refused(tmp_path, tensors, head, r"layer 'dec': token counts \[0\] must be >= 1")
    head["layers"]["dec"]["tokens"] = [24, 24]  # two counts for one term
    refused(tmp_path, tensors, head, r"layer 'dec', term 1: no factor \['A or A_vals\+A_vecs', 'G or")


def test_an_empty_fingerprint_no_longer_switches_the_model_check_off(setup, kfac_file, tmp_path):
    model = setup[0]
    tensors, head = kfac_file
    head["fingerprint"] = ""
    refused(tmp_path, tensors, head, r" carries no base-weight fingerprint.*allow_fingerprint_mismatch", model=model)
    bad = tmp_path / "bad.safetensors"
    Curvature.load(bad)  # without a model there is nothing to compare
    with pytest.warns(UserWarning, match="no base-weight fingerprint"):
        Curvature.load(bad, model, allow_fingerprint_mismatch=True)  # the explicit opt-out


def test_a_flipped_header_byte_names_the_file(kfac_file, tmp_path):
    tensors, head = kfac_file
    broken = json.dumps(head).replace('"samples":', '"samples";', 1)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata={"tts_bpeft": broken})
    with pytest.raises(ValueError, match=rf"{path}: the tts_bpeft header is not valid JSON.*{FIX}"):
        Curvature.load(path)


def test_format_2_files_are_still_read_and_unknown_formats_refused(setup, kfac_file, tmp_path):
    tensors, head = kfac_file  # this estimate has no block-diagonal factor: its tensors are format 2's too
    assert head["format"] == 3 and all(key.count("::") == 2 for key in tensors)
    head["format"] = 2
    loaded = Curvature.load(write(tmp_path / "format2.safetensors", tensors, head, resign=True), setup[0])
    assert torch.equal(loaded.term("enc")["A"], setup[1].term("enc")["A"])
    head["format"] = 1
    refused(tmp_path, tensors, head, rf"curvature file format 1, this package reads formats \(2, 3\).*{FIX}")


def test_a_tensor_name_of_the_wrong_shape_is_named(kfac_file, tmp_path):
    tensors, head = kfac_file
    for name, odd in (("bad", "enc::0"), ("bad2", "enc::0::A::values::x")):  # too few and too many fields
        edited = {**tensors, odd: torch.eye(2)}
        refused(tmp_path, edited, head, rf": tensor {odd} belongs to no layer of the header", name=name)


def test_a_missing_header_key_is_named(kfac_file, tmp_path):
    tensors, head = kfac_file
    mc_samples = head.pop("mc_samples")
    refused(tmp_path, tensors, head, rf": the header lacks \['mc_samples'\].*{FIX}")
    head["mc_samples"] = mc_samples
    del head["layers"]["dec"]["tokens"]
    refused(tmp_path, tensors, head, r"layer 'dec': the header lacks \['tokens'\]", name="bad2")


def test_a_missing_tensor_is_found_at_load_time_not_at_the_first_penalty(kfac_file, tmp_path):
    tensors, head = kfac_file
    del tensors["dec::0::G"]
    refused(tmp_path, tensors, head, rf", layer 'dec': tensor dec::0::G is missing from the file.*{FIX}", resign=False)
    head["checksums"].pop("dec::0::G")  # also unlisted: the term itself lacks a factor
    refused(tmp_path, tensors, head, r"layer 'dec', term 0: no factor \['G or G_vals\+G_vecs'\]", name="bad2")


def test_good_files_still_round_trip_in_every_storage_form(setup, tmp_path):
    model, kfac, ewc = setup
    with pytest.raises(ValueError, match="compress them first"):  # dense KFAC in bf16 is not PSD (storage.py)
        kfac.save(tmp_path / "dense_bf16.safetensors", dtype=torch.bfloat16)
    for curvature in (kfac, ewc, kfac.compress(2)):
        for dtype in ((None,) if curvature is kfac else (None, torch.bfloat16)):
            path = curvature.save(tmp_path / f"{curvature.method}.safetensors", dtype=dtype)
            loaded = Curvature.load(path, model)
            for name in curvature.names:
                for key, value in curvature.term(name).items():
                    expected = value.to(dtype).float() if dtype is not None else value
                    assert torch.equal(loaded.term(name)[key], expected)
