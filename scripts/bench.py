"""Benchmark one xpdl training step against PyTorch eager and a matmul floor.

One training step = forward, backward and Adam update (lr 1e-3) on one batch of
the net ``{affine - batch norm - relu - dropout(keep 0.5)} x 2 - affine -
softmax`` in float32, on random data (standard normal features, labels uniform
in [0, 10)).

Contenders, timed in the same process, round robin, repeated:

* ``xpdl``        -- ``Trainer.step`` on pre-made device batches.
* ``torch``       -- PyTorch eager, same model, ``torch.optim.Adam`` (foreach).
* ``torch-fused`` -- the same with ``Adam(fused=True)``.
* ``floor``       -- only the matrix products a step cannot avoid, in the
  backend's own library with preallocated outputs: per layer ``X @ W`` and
  ``X.T @ dout``, plus ``dout @ W.T`` for every layer but the first.

Examples::

    python scripts/bench.py                          # small, medium, large
    python scripts/bench.py --config medium --repeats 20 --json out.json
    python scripts/bench.py --config small,medium --memory --sweep
    python scripts/bench.py --backend cupy --no-torch
    python scripts/bench.py --config small,medium --profile   # where a step's time goes

``--profile`` (NumPy backend) times every part of an xpdl step on its own, with
wrappers around the backend's matrix products, compiled kernels, dropout words,
loss and update: per part the milliseconds per step, what it computes (GFLOP) or
moves through memory (MB: the bytes of the arrays it reads and writes, each once),
and the rate that makes; ``python`` is the rest of the step (the step's time minus
its timed parts). ``--threads-ab`` adds a contender ``xpdl-all-threads`` with every
matrix product on all BLAS threads (the policy before :mod:`xpdl.threads`).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import BuiltinFunctionType, ModuleType
from typing import Any, NoReturn

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent

CONFIGS: dict[str, dict[str, Any]] = {
    "small": {"batch": 200, "sizes": [3072, 100, 100, 10]},
    "medium": {"batch": 256, "sizes": [3072, 1024, 1024, 10]},
    "large": {"batch": 1024, "sizes": [3072, 4096, 4096, 10]},
}
# Rounds of the round robin when --repeats is not given. Large on CPU takes
# seconds per step, so it gets fewer rounds there.
DEFAULT_REPEATS_CPU = {"small": 10, "medium": 10, "large": 3}
DEFAULT_REPEATS_GPU = {"small": 20, "medium": 20, "large": 20}
SWEEP_REPEATS_CPU, SWEEP_REPEATS_GPU = 5, 10
SWEEP_BATCHES = [64, 128, 256, 512, 1024, 2048, 4096]
NUM_CLASSES = 10
N_BATCHES = 4  # distinct pre-made batches, cycled through
BLOCK_TARGET_S = 0.1  # each timed block runs enough steps to last about this
PAUSE_S = 0.2  # let the previous library's BLAS/OpenMP threads go idle
LEARNING_RATE = 1e-3
KEEP_PROB = 0.5  # xpdl's dropout=0.5 (keep) is torch's Dropout(p=0.5) (drop)
DTYPE = np.float32


# --------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------


def _xpdl_import_error(exc: BaseException) -> NoReturn:
    sys.exit(
        f"error: cannot import xpdl ({type(exc).__name__}: {exc}).\n"
        f"Install it (pip install -e {REPO_ROOT}) or run this script from the repository."
    )


def import_xpdl() -> ModuleType:
    """Import xpdl: installed if possible, else from the repository root."""
    try:
        mod = importlib.import_module("xpdl")
    except ModuleNotFoundError as exc:
        if exc.name != "xpdl":
            _xpdl_import_error(exc)  # xpdl is there but one of its imports is missing
        mod = None
    except Exception as exc:
        _xpdl_import_error(exc)
    if mod is None or getattr(mod, "__file__", None) is None:  # absent, or an empty namespace package
        sys.modules.pop("xpdl", None)
        sys.path.insert(0, str(REPO_ROOT))
        importlib.invalidate_caches()
        try:
            mod = importlib.import_module("xpdl")
        except Exception as exc:
            _xpdl_import_error(exc)
    missing = [n for n in ("get_backend", "FullyConnectedNet", "Trainer") if not hasattr(mod, n)]
    if missing:
        where = getattr(mod, "__file__", None) or list(getattr(mod, "__path__", []))
        sys.exit(f"error: xpdl imported from {where} lacks {', '.join(missing)}; is it complete?")
    return mod


def import_torch() -> tuple[ModuleType | None, str]:
    """Return (torch or None, reason it is missing)."""
    try:
        import torch
    except ImportError as exc:
        return None, f"torch not installed ({exc})"
    return torch, ""


def core_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_model() -> str:
    from xpdl.backends import cpu_name

    return cpu_name()


def is_gpu_backend(be: Any) -> bool:
    flag = getattr(be, "is_gpu", None)
    if isinstance(flag, bool):
        return flag
    names = (str(getattr(be, "name", "")), str(getattr(be.xp, "__name__", "")))
    return any("cupy" in n for n in names)


def gpu_index(be: Any) -> int:
    """CUDA device number of a GPU backend (0 unless it says otherwise)."""
    return int(getattr(getattr(be, "device", None), "id", 0) or 0)


def gpu_name(be: Any) -> str:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(gpu_index(be))
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def blas_info() -> str:
    """NumPy's BLAS and its thread count, if threadpoolctl is available."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "?"
    libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return ", ".join(f"{i.get('internal_api')} x{i.get('num_threads')}" for i in libs) or "?"


def fast_paths(xpdl: ModuleType, be: Any) -> str | None:
    info = getattr(xpdl, "fast_paths_info", None)
    if not callable(info):
        return None
    try:
        return str(info())
    except TypeError:
        return str(info(be))


def environment(xpdl: ModuleType, be: Any, torch: ModuleType | None, threads: int) -> dict[str, Any]:
    gpu = is_gpu_backend(be)
    env: dict[str, Any] = {
        "device": gpu_name(be) if gpu else cpu_model(),
        "gpu": gpu,
        "cores": core_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": blas_info(),
        "xpdl": getattr(xpdl, "__version__", "?"),
        "xpdl_from": str(getattr(xpdl, "__file__", None) or list(getattr(xpdl, "__path__", []))),
        "backend": str(getattr(be, "name", "?")),
        "fast_paths": fast_paths(xpdl, be),
        "torch": torch.__version__ if torch is not None else None,
        "torch_threads": threads if torch is not None else None,
    }
    if gpu:
        import cupy

        env["cupy"] = cupy.__version__
    return env


def format_header(env: dict[str, Any]) -> str:
    lines = [
        f"device: {env['device']} | cores: {env['cores']} | backend: {env['backend']}",
        "versions: python {python}, numpy {numpy} (BLAS {numpy_blas}), xpdl {xpdl}".format(**env)
        + (f", cupy {env['cupy']}" if env.get("cupy") else "")
        + (f", torch {env['torch']} ({env['torch_threads']} threads)" if env["torch"] else ", torch n/a"),
        f"xpdl from: {env['xpdl_from']}",
    ]
    if env["fast_paths"] is not None:
        lines.append(f"xpdl fast paths: {env['fast_paths']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------


@dataclass
class Contender:
    """A named step function; ``step()`` runs one step, ``sync()`` waits for it."""

    name: str
    step: Callable[[], Any] | None
    sync: Callable[[], None]
    na: str = ""  # reason it cannot run, if ``step`` is None
    samples: list[float] = field(default_factory=list)  # seconds per step, one per round
    inner: int = 1  # steps per timed block

    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


def unavailable(name: str, reason: str) -> Contender:
    return Contender(name, None, lambda: None, na=reason)


def make_data(batch: int, dim: int, n_batches: int = N_BATCHES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_batches * batch, dim), dtype=DTYPE)
    y = rng.integers(0, NUM_CLASSES, size=n_batches * batch, dtype=np.int64)
    return X, y


def build_xpdl(
    xpdl: ModuleType, be: Any, sizes: list[int], X: np.ndarray, y: np.ndarray, batch: int
) -> tuple[Any, Any]:
    net = xpdl.FullyConnectedNet(
        input_dim=sizes[0],
        hidden_dims=list(sizes[1:-1]),
        num_classes=sizes[-1],
        dropout=KEEP_PROB,
        use_batchnorm=True,
        reg=0.0,
        weight_scale=1e-2,
        seed=0,
        dtype="float32",
        backend=be,
    )
    data = {"X_train": X, "y_train": y, "X_val": X[:batch], "y_val": y[:batch]}
    tr = xpdl.Trainer(
        net,
        data,
        update_rule="adam",
        updater_config={"learning_rate": LEARNING_RATE},
        batch_size=batch,
        verbose=False,
        seed=0,
    )
    return net, tr


def device_batches(be: Any, X: np.ndarray, y: np.ndarray, batch: int) -> list[tuple[Any, Any]]:
    n = X.shape[0] // batch
    return [(be.asarray(X[i * batch : (i + 1) * batch]), be.asarray(y[i * batch : (i + 1) * batch])) for i in range(n)]


def xpdl_contender(xpdl: ModuleType, be: Any, sizes: list[int], X: np.ndarray, y: np.ndarray, batch: int) -> Contender:
    try:
        _, tr = build_xpdl(xpdl, be, sizes, X, y, batch)
        batches = itertools.cycle(device_batches(be, X, y, batch))

        def step() -> Any:
            Xb, yb = next(batches)
            return tr.step(Xb, yb)

        step()
        be.synchronize()
    except Exception as exc:
        return unavailable("xpdl", f"{type(exc).__name__}: {exc}".splitlines()[0])
    return Contender("xpdl", step, be.synchronize)


def all_threads_contender(
    xpdl: ModuleType, be: Any, sizes: list[int], X: np.ndarray, y: np.ndarray, batch: int
) -> Contender:
    """xpdl with every matrix product on all BLAS threads: the thread policy before :mod:`xpdl.threads`."""
    from xpdl import threads

    c = xpdl_contender(xpdl, be, sizes, X, y, batch)
    if c.step is None:
        return unavailable("xpdl-all-threads", c.na)
    inner = c.step

    def step() -> Any:
        saved, threads.SMALL_PRODUCT = threads.SMALL_PRODUCT, 0
        try:
            return inner()
        finally:
            threads.SMALL_PRODUCT = saved

    return Contender("xpdl-all-threads", step, c.sync)


def make_torch_model(torch: ModuleType, sizes: list[int], device: str) -> Any:
    """{Linear - BatchNorm1d - ReLU - Dropout} x (L-1) - Linear, float32."""
    nn = torch.nn
    layers: list[Any] = []
    for d_in, d_out in itertools.pairwise(sizes[:-1]):
        # momentum 0.1 here is a running average with factor 0.9 in xpdl
        layers += [
            nn.Linear(d_in, d_out),
            nn.BatchNorm1d(d_out, eps=1e-5, momentum=0.1),
            nn.ReLU(),
            nn.Dropout(1.0 - KEEP_PROB),
        ]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers).to(device=device, dtype=torch.float32).train()


def torch_device(torch: ModuleType, be: Any) -> str:
    if not is_gpu_backend(be):
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError("backend is on a GPU but this torch has no CUDA device")
    return f"cuda:{gpu_index(be)}"


def torch_contender(
    torch: ModuleType | None,
    torch_na: str,
    be: Any,
    sizes: list[int],
    X: np.ndarray,
    y: np.ndarray,
    batch: int,
    fused: bool,
) -> Contender:
    name = "torch-fused" if fused else "torch"
    if torch is None:
        return unavailable(name, torch_na)
    try:
        device = torch_device(torch, be)
        model = make_torch_model(torch, sizes, device)
        kw = {"fused": True} if fused else {}
        opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, **kw)
        Xt = torch.from_numpy(X).to(device)
        yt = torch.from_numpy(y).to(device)
        batches = itertools.cycle([(Xt[i : i + batch], yt[i : i + batch]) for i in range(0, X.shape[0], batch)])
        cross_entropy = torch.nn.functional.cross_entropy
        sync = (lambda: torch.cuda.synchronize(device)) if device != "cpu" else (lambda: None)

        def step() -> Any:
            xb, yb = next(batches)
            opt.zero_grad(set_to_none=True)
            loss = cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            return loss

        step()  # fused Adam on an unsupported device/version fails here at the latest
        sync()
    except Exception as exc:
        return unavailable(name, f"{type(exc).__name__}: {exc}".splitlines()[0])
    return Contender(name, step, sync)


def floor_module(gpu: bool) -> ModuleType:
    if gpu:
        import cupy

        return cupy
    return np


def floor_step(lib: ModuleType, sizes: list[int], batch: int) -> Callable[[], None]:
    """Only the unavoidable matmuls of one step, into preallocated outputs.

    Per layer i with input X_i (batch x d_in) and weights W_i (d_in x d_out):
    forward X_i @ W_i, weight gradient X_i.T @ dout_i, and for i > 0 the input
    gradient dout_i @ W_i.T. 2-D float32 matmul goes straight to the BLAS.
    """
    rng = np.random.default_rng(1)

    def arr(*shape: int) -> Any:
        return lib.asarray(rng.standard_normal(shape, dtype=DTYPE))

    ops = []
    for i, (d_in, d_out) in enumerate(itertools.pairwise(sizes)):
        x, w, dout = arr(batch, d_in), arr(d_in, d_out), arr(batch, d_out)
        ops.append((x, w, lib.empty((batch, d_out), DTYPE)))
        ops.append((x.T, dout, lib.empty((d_in, d_out), DTYPE)))
        if i > 0:
            ops.append((dout, w.T, lib.empty((batch, d_in), DTYPE)))
    matmul = lib.matmul

    def step() -> None:
        for a, b, out in ops:
            matmul(a, b, out=out)

    return step


def floor_flops(sizes: list[int], batch: int) -> int:
    n_products = [2 if i == 0 else 3 for i in range(len(sizes) - 1)]
    return sum(2 * batch * a * b * k for a, b, k in zip(sizes[:-1], sizes[1:], n_products))


def floor_contender(gpu: bool, be: Any, sizes: list[int], batch: int) -> Contender:
    try:
        lib = floor_module(gpu)
        if gpu:
            with lib.cuda.Device(gpu_index(be)):
                step = floor_step(lib, sizes, batch)
        else:
            step = floor_step(lib, sizes, batch)
        sync = be.synchronize
        step()
        sync()
    except Exception as exc:
        return unavailable("floor", f"{type(exc).__name__}: {exc}")
    return Contender("floor", step, sync)


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


def time_block(c: Contender, n: int) -> float:
    """Seconds per step over ``n`` back-to-back steps."""
    assert c.step is not None
    c.sync()
    t0 = time.perf_counter()
    for _ in range(n):
        c.step()
    c.sync()
    return (time.perf_counter() - t0) / n


def settle(c: Contender) -> None:
    """Pause, then one untimed step: idle threads of the library timed before
    keep spinning for a while and would steal cores from this one."""
    assert c.step is not None
    time.sleep(PAUSE_S)
    c.step()
    c.sync()


def time_contenders(contenders: list[Contender], repeats: int, warmup: int) -> None:
    """Warm up (``warmup`` steps each), then time round robin ``repeats`` times.

    Each round gives every contender a pause, one untimed step and a timed
    block of ``inner`` steps (about BLOCK_TARGET_S long); the per-step time of
    the block is one sample. The figure reported is the median over rounds.
    """
    live = [c for c in contenders if c.step is not None]
    for c in live:
        settle(c)  # the first warm-up step
        # the other warm-up steps, timed one by one; the fastest sets the block size
        t = min((time_block(c, 1) for _ in range(max(warmup - 1, 1))), default=0.0)
        c.inner = max(1, math.ceil(BLOCK_TARGET_S / max(t, 1e-9)))
    for _ in range(repeats):
        for c in live:
            settle(c)
            c.samples.append(time_block(c, c.inner))


# --------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------


def required_bytes(sizes: list[int], batch: int, itemsize: int = 4) -> dict[str, int]:
    """Bytes that must exist during a step.

    params P = sum_i (d_i * d_{i+1} + d_{i+1})  +  2 * sum_hidden H  (gamma, beta)
    state    = P * itemsize * 4                 (params, gradients, Adam m and v)
    cache    = sum_hidden 4 * batch * H * itemsize   (affine output, bn xhat,
               relu/dropout output, dropout mask)
               + batch * C * itemsize           (scores)
    """
    hidden = sizes[1:-1]
    n_params = sum(a * b + b for a, b in itertools.pairwise(sizes)) + 2 * sum(hidden)
    cache = sum(4 * batch * h for h in hidden) + batch * sizes[-1]
    return {
        "params": n_params * itemsize,
        "grads": n_params * itemsize,
        "adam": 2 * n_params * itemsize,
        "activations": cache * itemsize,
        "total": (4 * n_params + cache) * itemsize,
    }


def measure_memory(xpdl: ModuleType, be: Any, gpu: bool, sizes: list[int], batch: int, warmup: int) -> dict[str, Any]:
    X, y = make_data(batch, sizes[0], n_batches=1, seed=2)
    Xb, yb = device_batches(be, X, y, batch)[0]
    if gpu:
        return _memory_gpu(xpdl, be, sizes, X, y, Xb, yb, batch, warmup)
    return _memory_cpu(xpdl, be, sizes, X, y, Xb, yb, batch, warmup)


def _memory_cpu(
    xpdl: ModuleType, be: Any, sizes: list[int], X: np.ndarray, y: np.ndarray, Xb: Any, yb: Any, batch: int, warmup: int
) -> dict[str, Any]:
    # Traced from before the net is built, so parameters and optimizer state
    # count; the host data and the batch are made before and do not.
    gc.collect()
    tracemalloc.start()
    try:
        _, tr = build_xpdl(xpdl, be, sizes, X, y, batch)
        after_build = tracemalloc.get_traced_memory()[0]  # params and any copy of the data
        for _ in range(warmup):
            tr.step(Xb, yb)
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        tr.step(Xb, yb)
        be.synchronize()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return {
        "method": "tracemalloc peak during one step (all traced since the net was built)",
        "peak": peak,
        "between_steps": base,
        "after_build": after_build,
    }


def _memory_gpu(
    xpdl: ModuleType, be: Any, sizes: list[int], X: np.ndarray, y: np.ndarray, Xb: Any, yb: Any, batch: int, warmup: int
) -> dict[str, Any]:
    import cupy

    pool = cupy.get_default_memory_pool()
    be.synchronize()
    pool.free_all_blocks()
    used0 = pool.used_bytes()  # the batch and whatever else is alive already
    _, tr = build_xpdl(xpdl, be, sizes, X, y, batch)
    for _ in range(warmup):
        tr.step(Xb, yb)
    be.synchronize()
    base = pool.used_bytes() - used0
    pool.free_all_blocks()  # drop cached blocks: the pool then grows to the step's high water
    tr.step(Xb, yb)
    be.synchronize()
    peak = pool.total_bytes() - used0
    return {
        "method": "cupy default pool total_bytes after one step (freed blocks dropped before); "
        "upper bound: includes the pool's rounding and fragmentation",
        "peak": peak,
        "between_steps": base,
    }


def format_memory(name: str, mem: dict[str, Any], req: dict[str, int]) -> str:
    mib = 1 << 20
    return (
        f"{name:<7} peak {mem['peak'] / mib:9.1f} MiB  between steps {mem['between_steps'] / mib:9.1f} MiB"
        f"  required {req['total'] / mib:9.1f} MiB (params+grads+adam {4 * req['params'] / mib:.1f},"
        f" activations {req['activations'] / mib:.1f})  peak/required {mem['peak'] / req['total']:5.2f}"
    )


# --------------------------------------------------------------------------
# Runs and tables
# --------------------------------------------------------------------------


def run_config(
    name: str,
    xpdl: ModuleType,
    be: Any,
    torch: ModuleType | None,
    torch_na: str,
    gpu: bool,
    repeats: int,
    warmup: int,
    threads_ab: bool = False,
) -> dict[str, Any]:
    cfg = CONFIGS[name]
    batch, sizes = cfg["batch"], cfg["sizes"]
    X, y = make_data(batch, sizes[0])
    contenders = [
        xpdl_contender(xpdl, be, sizes, X, y, batch),
        torch_contender(torch, torch_na, be, sizes, X, y, batch, fused=False),
        torch_contender(torch, torch_na, be, sizes, X, y, batch, fused=True),
        floor_contender(gpu, be, sizes, batch),
    ]
    if threads_ab:
        contenders.append(all_threads_contender(xpdl, be, sizes, X, y, batch))
    time_contenders(contenders, repeats, warmup)
    res: dict[str, Any] = {
        "config": name,
        "batch": batch,
        "sizes": sizes,
        "repeats": repeats,
        "floor_gflop": floor_flops(sizes, batch) / 1e9,
        "contenders": {},
    }
    for c in contenders:
        med = c.median()
        res["contenders"][c.name] = {
            "ms": med * 1e3 if med is not None else None,
            "min_ms": min(c.samples) * 1e3 if c.samples else None,
            "samples_ms": [s * 1e3 for s in c.samples],
            "steps_per_block": c.inner if c.samples else None,
            "na": c.na or None,
        }
    res["ratios"] = {c.name: paired_ratio(contenders[0], c) for c in contenders[1:]}
    return res


def paired_ratio(a: Contender, b: Contender) -> float | None:
    """Median over rounds of ``a``'s time / ``b``'s time in the same round.

    Rounds alternate the contenders, so pairing them cancels the slow drifts of a
    shared, noisy machine that a ratio of two medians would keep.
    """
    pairs = [x / y for x, y in zip(a.samples, b.samples) if y]
    return statistics.median(pairs) if pairs else None


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def format_table(results: list[dict[str, Any]]) -> str:
    cols = [
        "config",
        "batch",
        "xpdl ms",
        "torch ms",
        "fused ms",
        "floor ms",
        "x/torch",
        "x/fused",
        "x/floor",
        "xpdl smp/s",
    ]
    rows = [cols]
    notes: list[str] = []
    for r in results:
        ms = {k: v["ms"] for k, v in r["contenders"].items()}
        x = ms["xpdl"]
        rows.append(
            [
                r["config"],
                str(r["batch"]),
                _fmt(x, ".2f"),
                _fmt(ms["torch"], ".2f"),
                _fmt(ms["torch-fused"], ".2f"),
                _fmt(ms["floor"], ".2f"),
                _fmt(r["ratios"]["torch"], ".2f"),
                _fmt(r["ratios"]["torch-fused"], ".2f"),
                _fmt(r["ratios"]["floor"], ".2f"),
                _fmt(r["batch"] / (x / 1e3) if x else None, ",.0f"),
            ]
        )
        if "xpdl-all-threads" in r["ratios"]:
            notes.append(
                f"  {r['config']}: xpdl-all-threads {_fmt(ms['xpdl-all-threads'], '.2f')} ms;"
                f" xpdl/xpdl-all-threads {_fmt(r['ratios']['xpdl-all-threads'], '.3f')} (paired)"
            )
        for k, v in r["contenders"].items():
            if v["na"]:
                notes.append(f"  {r['config']}: {k} n/a: {v['na']}")
        if ms["floor"]:
            notes.append(
                f"  {r['config']}: floor = {r['floor_gflop']:.2f} GFLOP/step"
                f" = {r['floor_gflop'] / ms['floor'] * 1e3:.0f} GFLOP/s"
            )
    notes.append("  ms: medians over rounds; x/...: medians of the per-round ratios (paired)")
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + notes)


def run_sweep(
    xpdl: ModuleType,
    be: Any,
    torch: ModuleType | None,
    torch_na: str,
    gpu: bool,
    repeats: int,
    warmup: int,
    batches: list[int],
) -> list[dict[str, Any]]:
    sizes = CONFIGS["medium"]["sizes"]
    out = []
    for batch in batches:
        X, y = make_data(batch, sizes[0])
        contenders = [
            xpdl_contender(xpdl, be, sizes, X, y, batch),
            torch_contender(torch, torch_na, be, sizes, X, y, batch, fused=False),
        ]
        time_contenders(contenders, repeats, warmup)
        row: dict[str, Any] = {"batch": batch}
        for c in contenders:
            med = c.median()
            row[c.name] = med / batch * 1e6 if med is not None else None
            row[c.name + "_na"] = c.na or None
        out.append(row)
        print(
            f"  sweep batch {batch}: us/sample xpdl {_fmt(row['xpdl'], '.2f')}, torch {_fmt(row['torch'], '.2f')}",
            file=sys.stderr,
        )
    return out


def format_sweep(rows: list[dict[str, Any]]) -> str:
    lines = ["batch   xpdl us/smp  torch us/smp  xpdl/torch", "-----   -----------  ------------  ----------"]
    for r in rows:
        lines.append(
            f"{r['batch']:5d}   {_fmt(r['xpdl'], '.2f'):>11}  {_fmt(r['torch'], '.2f'):>12}"
            f"  {_fmt(r['xpdl'] / r['torch'] if r['xpdl'] and r['torch'] else None, '.2f'):>10}"
        )
    na = {f"{k[:-3]} n/a: {r[k]}" for r in rows for k in ("xpdl_na", "torch_na") if r.get(k)}
    return "\n".join(lines + [f"  {n}" for n in sorted(na)])


# --------------------------------------------------------------------------
# Profile: where an xpdl step's time goes (NumPy backend)
# --------------------------------------------------------------------------


@dataclass
class Part:
    """One part of a step: total seconds and calls over the profiled steps, and its work per call."""

    name: str
    seconds: float = 0.0
    calls: int = 0
    flops: float = 0.0  # per profiled run, summed over calls
    bytes: float = 0.0


def _array_bytes(args: tuple[Any, ...]) -> int:
    return sum(a.nbytes for a in args if isinstance(a, np.ndarray) and a.ndim > 0)


def profile_step(xpdl: ModuleType, be: Any, name: str, steps: int = 0, warmup: int = 3) -> dict[str, Any]:
    """Time each part of ``steps`` xpdl steps of config ``name`` (enough for about a second when 0)."""
    import xpdl.backends.numpy_backend as nb
    from xpdl.backends import cpu_kernels

    cfg = CONFIGS[name]
    batch, sizes = cfg["batch"], cfg["sizes"]
    X, y = make_data(batch, sizes[0])
    _, tr = build_xpdl(xpdl, be, sizes, X, y, batch)
    batches = itertools.cycle(device_batches(be, X, y, batch))
    parts: dict[str, Part] = {}
    active = [False]

    def record(label: str, t: float, flops: float, nbytes: float) -> None:
        if not active[0]:
            return
        p = parts.setdefault(label, Part(label))
        p.seconds += t
        p.calls += 1
        p.flops += flops
        p.bytes += nbytes

    def matmul(a: Any, b: Any, out: Any) -> Any:
        t0 = time.perf_counter()
        r = orig_matmul(a, b, out)
        m, k, n = a.shape[0], a.shape[1], b.shape[1]
        kind = (
            "dW = X.T @ dA"
            if a.strides[0] < a.strides[1]
            else ("dX = dA @ W.T" if b.strides[0] < b.strides[1] else "A = X @ W")
        )
        record(f"matmul {kind} {m}x{k}x{n}", time.perf_counter() - t0, 2.0 * m * k * n, _array_bytes((a, b, out)))
        return r

    def wrap_kernel(label: str, f: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            r = f(*args, **kw)
            t = time.perf_counter() - t0
            arrays = tuple(a for a in (*args, r) if isinstance(a, np.ndarray))
            shape = next((a.shape for a in arrays if a.ndim == 2), None)
            where = "x".join(map(str, shape)) if shape else f"{arrays[0].size}" if arrays else ""
            record(f"{label} {where}".rstrip(), t, 0.0, _array_bytes(arrays))
            return r

        return timed

    def wrap_method(label: str, f: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            r = f(*args, **kw)
            record(label, time.perf_counter() - t0, 0.0, _array_bytes(args[1:]))
            return r

        return timed

    orig_matmul = nb._matmul
    # Dropout's Philox words are timed as part of "dropout random words", which calls them.
    inner = {"philox_uint32", "instruction_set"}
    kernel_names = [
        n for n in cpu_kernels.__all__ if type(getattr(cpu_kernels, n)) is BuiltinFunctionType and n not in inner
    ]
    saved_kernels = {n: getattr(cpu_kernels, n) for n in kernel_names}
    saved_updates = dict(cpu_kernels.UPDATE_KERNELS)
    cls = type(be)
    saved_methods = {m: cls.__dict__.get(m) for m in ("softmax_loss", "update")}
    saved_words = nb.dropout_words
    try:
        nb._matmul = matmul
        for n, f in saved_kernels.items():
            setattr(cpu_kernels, n, wrap_kernel(n, f))
        for rule, (kernel, args) in saved_updates.items():
            cpu_kernels.UPDATE_KERNELS[rule] = (wrap_kernel(f"{kernel.__name__}", kernel), args)
        cls.softmax_loss = wrap_method("softmax loss + its gradient", cls.softmax_loss)
        cls.update = wrap_method("update (Python around the kernel)", cls.update)
        nb.dropout_words = wrap_kernel("dropout random words", saved_words)
        step = lambda: tr.step(*next(batches))  # noqa: E731
        for _ in range(warmup):
            step()
        if steps <= 0:
            t0 = time.perf_counter()
            step()
            steps = max(5, math.ceil(1.0 / max(time.perf_counter() - t0, 1e-6)))
        active[0] = True
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        total = time.perf_counter() - t0
    finally:
        active[0] = False
        nb._matmul = orig_matmul
        for n, f in saved_kernels.items():
            setattr(cpu_kernels, n, f)
        cpu_kernels.UPDATE_KERNELS.clear()
        cpu_kernels.UPDATE_KERNELS.update(saved_updates)
        for m, f in saved_methods.items():
            if f is None:
                delattr(cls, m)
            else:
                setattr(cls, m, f)
        nb.dropout_words = saved_words
    update = parts.pop("update (Python around the kernel)", None)
    if update is not None:  # its kernels are timed on their own; what remains is the Python around them
        inner = sum(p.seconds for p in parts.values() if p.name.split()[0].endswith("_update"))
        update.seconds -= inner
        update.bytes = 0.0
        parts[update.name] = update
    timed = sum(p.seconds for p in parts.values())
    rows = [
        {
            "part": p.name,
            "calls_per_step": p.calls / steps,
            "ms_per_step": p.seconds / steps * 1e3,
            "share": p.seconds / total,
            "gflop_per_step": p.flops / steps / 1e9,
            "mb_per_step": p.bytes / steps / 1e6,
            "gflops": p.flops / p.seconds / 1e9 if p.flops and p.seconds else None,
            "gbs": p.bytes / p.seconds / 1e9 if p.bytes and p.seconds else None,
        }
        for p in parts.values()
    ]
    rows.append(
        {
            "part": "python (rest of the step)",
            "calls_per_step": 1.0,
            "ms_per_step": (total - timed) / steps * 1e3,
            "share": (total - timed) / total,
            "gflop_per_step": 0.0,
            "mb_per_step": 0.0,
            "gflops": None,
            "gbs": None,
        }
    )
    return {
        "config": name,
        "batch": batch,
        "sizes": sizes,
        "steps": steps,
        "step_ms": total / steps * 1e3,
        "parts": rows,
    }


def format_profile(prof: dict[str, Any]) -> str:
    head = (
        f"{prof['config']} {'-'.join(map(str, prof['sizes']))}, batch {prof['batch']}:"
        f" {prof['step_ms']:.2f} ms/step over {prof['steps']} steps"
    )
    cols = ["part", "calls", "ms/step", "share", "GFLOP", "MB", "GFLOP/s", "GB/s"]
    rows = [cols]
    for r in prof["parts"]:
        rows.append(
            [
                r["part"],
                f"{r['calls_per_step']:.0f}",
                f"{r['ms_per_step']:.3f}",
                f"{100 * r['share']:.1f}%",
                f"{r['gflop_per_step']:.3f}" if r["gflop_per_step"] else "",
                f"{r['mb_per_step']:.2f}" if r["mb_per_step"] else "",
                _fmt(r["gflops"], ".1f") if r["gflops"] else "",
                _fmt(r["gbs"], ".1f") if r["gbs"] else "",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([head, *lines])


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_configs(values: list[str] | None) -> list[str]:
    names: list[str] = []
    for v in values or ["small,medium,large"]:
        for n in v.split(","):
            n = n.strip()
            if n not in CONFIGS:
                raise SystemExit(f"error: unknown config {n!r} (choose from {', '.join(CONFIGS)})")
            if n not in names:
                names.append(n)
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config",
        action="append",
        metavar="NAME",
        help="small, medium or large; repeatable or comma separated (default: all three)",
    )
    p.add_argument("--backend", default="auto", help="xpdl backend name (default: auto)")
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="round-robin rounds per config (default: small/medium 10, large 3 on CPU; 20 on GPU;"
        " sweep 5 on CPU, 10 on GPU)",
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per contender (default: 3)")
    p.add_argument("--json", metavar="FILE", help="write all figures to FILE")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    p.add_argument(
        "--sweep",
        action="store_true",
        help="us/sample of xpdl and torch over batch sizes "
        + ",".join(map(str, SWEEP_BATCHES))
        + " on the medium widths",
    )
    p.add_argument(
        "--sweep-batches",
        metavar="LIST",
        default=None,
        help=f"comma-separated batch sizes for --sweep (default: {','.join(map(str, SWEEP_BATCHES))})",
    )
    p.add_argument(
        "--memory", action="store_true", help="peak memory of one xpdl step against the bytes that must exist"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="per config, the time of each part of an xpdl step beside its GFLOP and MB (NumPy backend only)",
    )
    p.add_argument(
        "--threads-ab",
        action="store_true",
        help="also time xpdl with every matrix product on all BLAS threads (the policy before xpdl.threads)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs = parse_configs(args.config)
    if (args.repeats is not None and args.repeats < 1) or args.warmup < 1:
        raise SystemExit("error: --repeats and --warmup must be at least 1")
    xpdl = import_xpdl()
    try:
        be = xpdl.get_backend(args.backend)
    except Exception as exc:
        sys.exit(f"error: xpdl.get_backend({args.backend!r}) failed: {type(exc).__name__}: {exc}")
    gpu = is_gpu_backend(be)

    threads = core_count()
    if args.no_torch:
        torch, torch_na = None, "skipped (--no-torch)"
    else:
        torch, torch_na = import_torch()
        if torch is None:
            print(f"note: {torch_na}; continuing without PyTorch", file=sys.stderr)
        else:
            torch.set_num_threads(threads)

    env = environment(xpdl, be, torch, threads)
    print(format_header(env), file=sys.stderr)
    report: dict[str, Any] = {"env": env, "results": []}

    if args.profile:
        if gpu:
            sys.exit("error: --profile times the NumPy backend's parts; run it with --backend numpy")
        report["profile"] = []
        print()
        print(format_header(env))
        for name in configs:
            prof = profile_step(xpdl, be, name, warmup=args.warmup)
            report["profile"].append(prof)
            print()
            print(format_profile(prof))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
        return 0

    for name in configs:
        repeats = args.repeats or (DEFAULT_REPEATS_GPU if gpu else DEFAULT_REPEATS_CPU)[name]
        print(f"running {name} ({repeats} rounds)...", file=sys.stderr)
        report["results"].append(
            run_config(name, xpdl, be, torch, torch_na, gpu, repeats, args.warmup, args.threads_ab)
        )

    if args.memory:
        report["memory"] = {}
        for name in configs:
            cfg = CONFIGS[name]
            try:
                mem = measure_memory(xpdl, be, gpu, cfg["sizes"], cfg["batch"], args.warmup)
            except Exception as exc:
                mem = {"na": f"{type(exc).__name__}: {exc}"}
            report["memory"][name] = {"measured": mem, "required": required_bytes(cfg["sizes"], cfg["batch"])}

    if args.sweep:
        batches = [int(b) for b in args.sweep_batches.split(",")] if args.sweep_batches else SWEEP_BATCHES
        print("running sweep...", file=sys.stderr)
        repeats = args.repeats or (SWEEP_REPEATS_GPU if gpu else SWEEP_REPEATS_CPU)
        report["sweep"] = run_sweep(xpdl, be, torch, torch_na, gpu, repeats, args.warmup, batches)

    print()
    print(format_header(env))
    print()
    print(format_table(report["results"]))
    if args.memory:
        print("\nmemory of one xpdl step:")
        for name, m in report["memory"].items():
            if "na" in m["measured"]:
                print(f"{name:<7} n/a: {m['measured']['na']}")
            else:
                print(format_memory(name, m["measured"], m["required"]))
        print(f"  ({next(iter(report['memory'].values()))['measured'].get('method', '')})")
    if args.sweep:
        print(f"\nsweep over batch size, medium widths {CONFIGS['medium']['sizes']}:")
        print(format_sweep(report["sweep"]))

    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
