"""Suite-wide guard: every test module starts and ends with float32 as torch's default dtype.

A few Kokoro tests run in float64 (module fixtures); tensors and transforms that other code creates lazily in
the default dtype (torchaudio's mel filterbank in ``styletts2.meldataset``, random draws of test builds)
must never inherit it in a later module.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _float32_default_dtype():
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(torch.float32)
