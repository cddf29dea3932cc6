"""The backend selector: names, the auto choice and its reason, host/device copies."""

from __future__ import annotations

import numpy as np
import pytest

from xpdl.backends import registry as B
from xpdl.host import dtype_name


def test_auto_picks_cupy_only_when_a_device_works(monkeypatch, capsys):
    monkeypatch.setattr(B, "probe_cupy", lambda device_id=0: "CuPy is not installed (test)")
    monkeypatch.delenv("XPDL_QUIET", raising=False)
    be = B._auto_backend()
    assert be.name == "numpy" and not be.is_gpu
    assert "because CuPy is not installed (test)" in be.reason
    assert "CuPy is not installed (test)" in capsys.readouterr().err


def test_default_name_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("XPDL_BACKEND", "array_api_strict")
    assert B.get_backend().name == "array_api_strict"
    monkeypatch.setenv("XPDL_BACKEND", "numpy")
    assert B.get_backend().name == "numpy"


def test_explicit_cupy_says_why_and_how_to_install(monkeypatch):
    monkeypatch.setattr(
        B,
        "_import_cupy",
        lambda: (_ for _ in ()).throw(
            B.BackendUnavailable(f"CuPy is not installed; install it with {B.CUDA_INSTALL_HINT}")
        ),
    )
    B._CACHE.pop("cupy:7", None)
    with pytest.raises(B.BackendUnavailable, match=r"xpdl\[cuda12\]"):
        B.get_backend("cupy:7")


def test_cupy_device_problems_are_named():
    class FakeRuntime:
        @staticmethod
        def getDeviceCount():
            return 0

    class FakeCupy:
        class cuda:
            runtime = FakeRuntime

    assert B.cuda_problem(FakeCupy, 0) == "no CUDA device is visible"

    class BrokenRuntime:
        @staticmethod
        def getDeviceCount():
            raise RuntimeError("cudaErrorInsufficientDriver")

    FakeCupy.cuda.runtime = BrokenRuntime
    assert "driver" in B.cuda_problem(FakeCupy, 0) and "InsufficientDriver" in B.cuda_problem(FakeCupy, 0)


@pytest.mark.parametrize(
    "name,error", [("tensorflow", ValueError), ("cupy:x", ValueError), ("cupy:-1", ValueError), (3, TypeError)]
)
def test_bad_names_are_refused(name, error):
    with pytest.raises(error, match="backend"):
        B.get_backend(name)


def test_host_device_round_trip(backend):
    host = np.arange(6, dtype=np.float64).reshape(2, 3)
    arr = backend.asarray(host, dtype="float32")
    assert backend.owns(arr)
    back = backend.to_numpy(arr)
    assert isinstance(back, np.ndarray) and back.dtype == np.float32
    np.testing.assert_array_equal(back, host)
    backend.synchronize()
    assert backend.zeros((2,), "float64").shape == (2,)


def test_owns_tells_backends_apart(backend):
    import array_api_strict

    arr = backend.asarray(np.ones(3))
    assert backend.owns(arr)
    others = [np.ones(3), array_api_strict.ones(3)]
    assert sum(backend.owns(o) for o in others) == (0 if backend.is_gpu else 1)


def test_available_backends_reports_reasons():
    avail = B.available_backends()
    assert avail["numpy"] == "" and avail["array_api_strict"] == ""
    assert isinstance(avail["cupy"], str)


def test_philox_words_are_made_on_the_device_and_equal_numpys_stream(backend):
    key, counter = 2**100 + 11, 2**64 - 1  # the counter carries into its second word
    words = backend.philox_uint32(key, counter, (4, 5))
    assert backend.owns(words) and tuple(words.shape) == (4, 5)
    raw = np.random.Philox(key=key, counter=counter).random_raw(12)  # 3 blocks of 4 words
    np.testing.assert_array_equal(backend.to_numpy(words), raw.view(np.uint32)[:20].reshape(4, 5))


def test_backend_of_an_array_is_the_backend_that_made_it(backend):
    assert B.backend_of(backend.zeros((2,), "float32")) is backend


def test_reference_twin_has_the_same_namespace_and_device_but_no_kernels(backend):
    ref = backend.reference()
    assert (ref.xp, ref.device, ref.name) == (backend.xp, backend.device, backend.name)
    assert ref.step_path == "reference" and ref.update_kernel("adam") is None


def test_xpdl_fused_0_selects_the_reference_twin(monkeypatch):
    be = B.get_backend("numpy")
    assert be.training_ops() is be
    monkeypatch.setenv("XPDL_FUSED", "0")
    assert be.training_ops().step_path == "reference"


def test_a_bad_xpdl_backend_is_named_as_the_variable(monkeypatch):
    monkeypatch.setenv("XPDL_BACKEND", "garbage")
    with pytest.raises(ValueError, match=r"^XPDL_BACKEND: expected one of .* got 'garbage'"):
        B.get_backend()


@pytest.mark.parametrize("name", ["uint8", "uint16", "uint32", "uint64", "int8", "int64", "float32"])
def test_dtype_names_keep_their_signedness(backend, name):
    assert dtype_name(backend.dtype(name)) == name
    assert dtype_name(np.dtype(name)) == name


def test_unsigned_host_data_keeps_its_values(backend):
    arr = backend.asarray(np.array([200, 255], np.uint8), dtype=np.uint8)
    np.testing.assert_array_equal(backend.to_numpy(arr), [200, 255])
