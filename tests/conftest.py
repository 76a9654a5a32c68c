import os

# one thread per test process, inherited by the subprocesses tests start: tests run in parallel
# (pytest-xdist, one worker per core), and two threads per process on a loaded core spin in OpenMP
# barriers (a test file took 1.4x as long beside two busy processes with two threads as with one)
os.environ["OMP_NUM_THREADS"] = "1"

import pyro  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
# PPL_VAE_DEVICE=cuda reruns the device-aware tests on a GPU (like Pyro's PYRO_DEVICE)
DEVICE = os.environ.get("PPL_VAE_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def _auto_device_is_the_test_device(monkeypatch):
    """In tests "auto" means DEVICE (cpu unless PPL_VAE_DEVICE says otherwise), so the suite
    gives the same numbers on a machine with a GPU; CUDA runs are asked for explicitly."""
    import ppl_vae.train
    from ppl_vae.device import resolve_device

    monkeypatch.setattr(ppl_vae.train, "resolve_device", lambda d="auto": resolve_device(DEVICE if d == "auto" else d))


@pytest.fixture(autouse=True)
def _fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    torch.set_num_threads(1)
    yield
    pyro.clear_param_store()
