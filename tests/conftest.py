"""Suite-wide fixtures.

Every test module starts and ends with float32 as torch's default dtype: a few Kokoro tests run in float64
(module fixtures); tensors and transforms that other code creates lazily in the default dtype (torchaudio's
mel filterbank in ``styletts2.meldataset``, random draws of test builds) must never inherit it in a later
module.

``one_thread``: a module of small layers asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _float32_default_dtype():
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: on a busy 2-core machine small layers, LSTMs and convolutions run
    several times faster than with two OpenMP threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
