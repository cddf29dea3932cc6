"""Data-parallel training on real MPI processes (``mpiexec -n 2`` and ``-n 4``, oversubscribed on 2 cores).

The claims: N ranks compute what one process computes (float64, batch norm and
dropout, to 1e-12) and stay bit-identical to each other; ``--local-batchnorm``
runs; a rank killed with SIGKILL ends the job within seconds and the resumed run
is bit-identical to an uninterrupted one; an exception in one rank aborts the
job instead of hanging; Ctrl-C stops every rank with the checkpoint intact. The
pieces that need no MPI (rank rows of a dropout draw, the launcher's command
line, batch sharding) are tested in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import xpdl
from xpdl.backends import get_backend
from xpdl.parallel import distributed, launch
from xpdl.rng import Generator
from xpdl.runs.net_checkpoint import load_checkpoint

REPO = Path(xpdl.__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "mpi_driver.py"


def _mpi_problem() -> str:
    try:
        import mpi4py  # noqa: F401
    except ImportError as exc:
        return f"mpi4py is not installed ({exc}); pip install 'xpdl[mpi]'"
    try:
        launch.find_mpiexec()
    except launch.LaunchError as exc:
        return str(exc)
    return ""


MPI_WHY = _mpi_problem()
needs_mpi = pytest.mark.skipif(bool(MPI_WHY), reason=f"needs mpi4py and mpiexec: {MPI_WHY}")


def environment() -> dict[str, str]:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "XPDL_QUIET": "1", "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def mpiexec(n: int) -> list[str]:
    """The launcher command for ``n`` ranks on this machine, with the flags ``--nproc`` would add."""
    exe = launch.find_mpiexec()
    flags = launch.launcher_flags(launch.mpi_flavor(exe), n, launch.usable_cores(), os.geteuid() == 0)
    return [exe, "-n", str(n), *[f for f in flags if f not in ("-bind-to", "--bind-to", "core")]]


def run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=timeout)


def driver(tmp_path: Path, name: str, ranks: int, *options: str) -> list[dict[str, np.ndarray]]:
    """Run tests/mpi_driver.py on ``ranks`` ranks (1: without MPI); every rank's final state."""
    prefix = mpiexec(ranks) if ranks > 1 else []
    result = run([*prefix, sys.executable, str(DRIVER), f"{name}.npz", *options], tmp_path)
    assert result.returncode == 0, result.stderr
    states = []
    for r in range(ranks):
        with np.load(tmp_path / f"{name}.rank{r}.npz") as f:
            states.append({k: f[k] for k in f.files})
    return states


def assert_states_close(actual: dict, desired: dict, tol: float) -> None:
    assert actual.keys() == desired.keys()
    for k, v in desired.items():
        if v.dtype.kind == "f":
            np.testing.assert_allclose(actual[k], v, rtol=tol, atol=tol, err_msg=k)
        else:
            assert np.array_equal(actual[k], v), k


def assert_states_equal(actual: dict, desired: dict) -> None:
    assert actual.keys() == desired.keys()
    for k, v in desired.items():
        assert np.array_equal(actual[k], v), k


# ------------------------------------------------------------------ real MPI jobs
@needs_mpi
def test_two_and_four_ranks_compute_what_one_process_computes(tmp_path):
    """float64, batch norm, dropout, L2 and Adam; 4 ranks split the 30-row batches unevenly (7, 8, 7, 8)."""
    one = driver(tmp_path, "one", 1)[0]
    assert one["loss_history"].shape == (16,) and len(one["val_acc_history"]) == 5
    for ranks in (2, 4):
        states = driver(tmp_path, f"ranks{ranks}", ranks)
        assert_states_close(states[0], one, 1e-12)
        for other in states[1:]:
            assert_states_equal(other, states[0])  # the ranks stay bit-identical


@needs_mpi
def test_local_batchnorm_runs_and_keeps_the_ranks_identical(tmp_path):
    synced = driver(tmp_path, "synced", 2)[0]
    local = driver(tmp_path, "local", 2, "--local-batchnorm")
    assert_states_equal(local[1], local[0])  # running statistics averaged, weights updated alike
    assert np.all(np.isfinite(local[0]["loss_history"]))
    assert not np.allclose(local[0]["model/W1"], synced["model/W1"], rtol=1e-6)  # per-rank statistics differ


@needs_mpi
def test_an_exception_in_one_rank_aborts_the_job(tmp_path):
    start = time.monotonic()
    result = run(
        [*mpiexec(2), sys.executable, str(DRIVER), "fail.npz", "--fail-rank", "1", "--fail-at", "3", "--epochs", "50"],
        tmp_path,
        timeout=60,
    )
    assert result.returncode != 0
    assert "rank 1 of 2 failed" in result.stderr and "injected failure in rank 1 at iteration 3" in result.stderr
    assert time.monotonic() - start < 30
    assert not list(tmp_path.glob("fail.rank*.npz"))


CLI_SETTINGS = [
    "--hidden-dims",
    "24,24",
    "--batch-size",
    "32",
    "--backend",
    "numpy",
    "--dtype",
    "float64",
    "--checkpoint-every",
    "4",
    "--quiet",
]


def xpdl_process(argv: list[str], cwd: Path, ranks: int = 0) -> subprocess.Popen:
    prefix = mpiexec(ranks) if ranks else []
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "xpdl", "train", *argv],
        cwd=cwd,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def rank_pid(rank: int, marker: str, timeout: float = 30) -> int:
    """The pid of the process of MPI rank ``rank`` whose command line contains ``marker``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                marker.encode() in cmdline
                and b"-m\0xpdl" in cmdline
                and any(v in env for v in (f"PMI_RANK={rank}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode()))
            ):
                return int(entry.name)
        time.sleep(0.02)
    raise AssertionError(f"no process of rank {rank} running {marker}")


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the job ended early: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.005)


def checkpoint_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a checkpoint file, and its histories (without wall times) as one JSON string."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != "meta.json"}
    ckpt = load_checkpoint(path)
    kept = {k: v for k, v in ckpt.get("history", {}).items() if k != "time_history"}
    arrays["history"] = np.asarray(json.dumps([kept, ckpt.get("counters", {}).get("t"), ckpt.get("rng")], default=str))
    return arrays


@needs_mpi
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process in /proc (Linux)")
def test_a_killed_rank_ends_the_job_and_the_resumed_run_is_bit_identical(tmp_path):
    epochs = ["--epochs", "8"]
    whole = xpdl_process([*CLI_SETTINGS, *epochs, "--out", "whole"], tmp_path, ranks=2)
    killed = xpdl_process([*CLI_SETTINGS, *epochs, "--out", "killed"], tmp_path, ranks=2)
    victim = rank_pid(1, "killed")
    wait_for(tmp_path / "killed" / "checkpoint.npz", killed)
    os.kill(victim, signal.SIGKILL)
    start = time.monotonic()
    _, err = killed.communicate(timeout=30)
    assert time.monotonic() - start < 10
    assert killed.returncode != 0, f"the job ended before rank 1 was killed: {err}"
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.npz")["counters"]["t"] < 8 * 35
    assert whole.wait(timeout=120) == 0, whole.communicate()[1]

    resumed = run([sys.executable, "-m", "xpdl", "train", "--resume", "killed", "--nproc", "2", "--quiet"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("checkpoint.npz", "best.npz"):
        assert_states_equal(checkpoint_arrays(tmp_path / "killed" / name), checkpoint_arrays(tmp_path / "whole" / name))


@needs_mpi
def test_ctrl_c_to_the_launcher_stops_every_rank_and_says_how_to_resume(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "xpdl", "train", "--nproc", "2", *CLI_SETTINGS, "--epochs", "500", "--out", "run"],
        cwd=tmp_path,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(tmp_path / "run" / "checkpoint.npz", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "xpdl train --resume run --nproc 2" in err
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz")["counters"]["t"] > 0


def _two_gpus_problem() -> str:
    if MPI_WHY:
        return MPI_WHY
    try:
        import cupy
        from cupy.cuda import nccl  # noqa: F401

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CuPy with NCCL is not usable here ({type(exc).__name__}: {exc})"
    return "" if count >= 2 else f"only {count} CUDA device(s) visible"


@pytest.mark.skipif(bool(_two_gpus_problem()), reason=f"NCCL needs two GPUs: {_two_gpus_problem()}")
def test_two_gpu_ranks_with_nccl_compute_what_one_cpu_process_computes(tmp_path):
    one = driver(tmp_path, "cpu", 1)[0]
    states = driver(tmp_path, "gpu", 2, "--backend", "cupy")
    assert_states_close(states[0], one, 1e-10)
    assert_states_equal(states[1], states[0])


# ------------------------------------------------------------------ in this process
@pytest.mark.parametrize("total,splits", [(13, (0, 6, 13)), (8, (0, 1, 2, 3, 8)), (5, (0, 5))])
def test_rank_rows_of_a_draw_are_the_rows_of_the_whole_draw(backend, total, splits):
    like = backend.zeros((1,), "float32")
    whole = np.asarray(backend.to_numpy(Generator(11).random_uint32((total, 7), like=like)))
    parts = []
    for first, stop in zip(splits, splits[1:]):
        g = Generator(11)
        parts.append(np.asarray(backend.to_numpy(g.random_uint32((stop - first, 7), like=like, rows=(first, total)))))
        assert g.counter == -(-total * 7 // 8)  # every rank advances by the whole draw
    assert np.array_equal(np.concatenate(parts), whole)


def test_rank_rows_outside_the_draw_are_refused():
    with pytest.raises(ValueError, match="rows"):
        Generator(1).random_uint32((4, 3), like=np.zeros(1), rows=(2, 5))


def test_shards_are_contiguous_and_cover_the_batch():
    class Fake(distributed.Communicator):
        def __init__(self, rank, size):
            super().__init__()
            self.rank, self.size = rank, size

    assert [distributed.shard(30, Fake(r, 4)) for r in range(4)] == [(0, 7), (7, 15), (15, 22), (22, 30)]


def test_without_a_launcher_init_gives_one_process(monkeypatch):
    for name in distributed.LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "_WORLD", None)
    comm = distributed.init()
    assert (comm.rank, comm.size, comm.name) == (0, 1, "single")
    buf = np.arange(3.0)
    assert comm.allreduce(buf) is buf and comm.bcast("x") == "x"


def test_trainer_refuses_a_foreign_comm_and_too_small_batches():
    X = np.zeros((10, 4))
    data = {"X_train": X, "y_train": np.zeros(10, np.int64), "X_val": X, "y_val": np.zeros(10, np.int64)}
    net = xpdl.FullyConnectedNet(
        input_dim=4, hidden_dims=[3], num_classes=2, use_batchnorm=True, backend=get_backend("numpy")
    )
    with pytest.raises(TypeError, match="comm"):
        xpdl.Trainer(net, data, comm="world")

    class Four(distributed.Communicator):
        def __init__(self):
            super().__init__()
            self.size = 4

    with pytest.raises(ValueError, match="2 sample\\(s\\) per rank for 4 ranks"):
        xpdl.Trainer(net, data, comm=Four(), batch_size=6, local_batchnorm=True)


def test_launcher_strips_nproc_and_names_the_run_folder():
    args = launch.rank_arguments(["--nproc", "4", "--epochs", "3", "--nproc=2"])
    assert args[:2] == ["--epochs", "3"] and args[2] == "--out" and args[3].startswith("runs")
    assert launch.rank_arguments(["--resume", "runs/a", "--nproc", "2"]) == ["--resume", "runs/a"]


def test_launcher_flags_for_open_mpi_as_root_beyond_the_cores_and_for_mpich():
    flags = launch.launcher_flags("openmpi", 4, 2, is_root=True)
    assert "--allow-run-as-root" in flags and "--oversubscribe" in flags and flags[:2] == ["--bind-to", "none"]
    assert "-x" in flags and "OPENBLAS_NUM_THREADS" in flags
    assert launch.launcher_flags("openmpi", 2, 8, is_root=False)[:2] == ["--bind-to", "core"]
    assert launch.launcher_flags("mpich", 2, 8, is_root=True) == ["-bind-to", "core"]
    assert launch.launcher_flags("mpich", 4, 2, is_root=True) == []


def test_each_rank_gets_its_share_of_the_cores():
    assert set(launch.thread_environment(4, 16).values()) == {"4"}
    assert launch.thread_environment(4, 2)["OPENBLAS_NUM_THREADS"] == "1"


@needs_mpi
def test_nproc_command_runs_the_bundled_mpiexec_with_thread_counts():
    cmd, env = launch.command(3, ["--epochs", "1", "--out", "x"])
    assert cmd[:3] == [launch.find_mpiexec(), "-n", "3"] and cmd[-4:] == ["--epochs", "1", "--out", "x"]
    assert env["OMP_NUM_THREADS"] == str(max(launch.usable_cores() // 3, 1))
