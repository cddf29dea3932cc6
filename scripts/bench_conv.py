"""Benchmark one xpdl conv-net training step against PyTorch eager and the im2col matrix products alone.

One training step = forward, backward and Adam update (lr 1e-3) on one batch of 64
random 3x32x32 float32 images (standard normal, labels uniform in [0, 10)).

Configs:

* ``three-layer`` -- cs231n's ThreeLayerConvNet: conv 7x7 x 32 (pad 3) - relu - 2x2 pool -
  affine 8192 -> 100 - relu - affine 100 -> 10.
* ``conv-bn``     -- 3 blocks of conv 3x3 (pad 1) - spatial batch norm - relu - 2x2 pool with
  32, 64, 128 filters, then affine 2048 -> 256 - relu - affine 256 -> 10.

Contenders, timed in the same process, round robin (interleaved), repeated:

* ``xpdl``  -- ``Trainer.step`` on a pre-made batch (NumPy backend: compiled conv blocks).
* ``torch`` -- PyTorch eager, the same model, ``torch.optim.Adam`` (foreach), same thread count.
* ``floor`` -- only the matrix products of the im2col formulation, preallocated outputs:
  per conv ``W (F, K) @ cols (K, M)`` and ``cols @ da.T`` (dW), plus ``W.T @ da`` for every conv
  but the first; per affine ``X @ W``, ``X.T @ dout`` and ``dout @ W.T``.

Memory (``--memory``): tracemalloc peak during one step (everything allocated since the
net was built: parameters, Adam moments, kept buffers), against the bytes that must exist:
parameters, gradients, two Adam moments, and per layer the activations the backward pass
reads (conv output, pooled output, normalized values); the im2col buffers are listed apart.

Example::

    python scripts/bench_conv.py --repeats 10 --memory
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import xpdl  # noqa: E402
from xpdl.cnn import ConvNet, ThreeLayerConvNet  # noqa: E402

CONFIGS = {
    "three-layer": {"kind": "three", "filters": (32,), "k": 7, "hidden": (100,), "norm": None},
    "conv-bn": {"kind": "conv", "filters": (32, 64, 128), "k": 3, "hidden": (256,), "norm": "batchnorm"},
}
BATCH, IMAGE, CLASSES = 64, (3, 32, 32), 10


def build_xpdl(cfg, X, y):
    if cfg["kind"] == "three":
        net = ThreeLayerConvNet(input_dim=IMAGE, num_filters=cfg["filters"][0], filter_size=cfg["k"],
                                hidden_dim=cfg["hidden"][0], weight_scale=1e-2, seed=0, backend="numpy")  # fmt: skip
    else:
        net = ConvNet(input_dim=IMAGE, conv_dims=cfg["filters"], filter_size=cfg["k"], hidden_dims=cfg["hidden"],
                      normalization=cfg["norm"], seed=0, backend="numpy")  # fmt: skip
    data = {"X_train": X, "y_train": y, "X_val": X[:8], "y_val": y[:8]}
    tr = xpdl.Trainer(net, data, update_rule="adam", updater_config={"learning_rate": 1e-3}, batch_size=BATCH,
                      num_epochs=1, verbose=False, seed=0)  # fmt: skip
    return net, tr


def build_torch(cfg):
    import torch
    from torch import nn

    layers, c, hw = [], IMAGE[0], IMAGE[1]
    for f in cfg["filters"]:
        layers += [nn.Conv2d(c, f, cfg["k"], padding=(cfg["k"] - 1) // 2)]
        if cfg["norm"]:
            layers += [nn.BatchNorm2d(f)]
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        c, hw = f, hw // 2
    d = c * hw * hw
    layers.append(nn.Flatten())
    for h in cfg["hidden"]:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, CLASSES))
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    loss_fn = nn.CrossEntropyLoss()
    return model, opt, loss_fn


def conv_shapes(cfg):
    """Per conv (K, F, M) and per affine (D, H) of the config, batch BATCH."""
    convs, c, hw = [], IMAGE[0], IMAGE[1]
    for f in cfg["filters"]:
        convs.append((c * cfg["k"] ** 2, f, BATCH * hw * hw, c, hw))
        c, hw = f, hw // 2
    dims = [c * hw * hw, *cfg["hidden"], CLASSES]
    return convs, list(zip(dims[:-1], dims[1:]))


def build_floor(cfg):
    rng = np.random.default_rng(0)
    convs, affines = conv_shapes(cfg)
    f32 = np.float32
    work = []
    for i, (k, f, m, _, _) in enumerate(convs):
        W, cols, da = (rng.standard_normal(s).astype(f32) for s in ((f, k), (k, m), (f, m)))
        work.append((W, cols, da, np.empty((f, m), f32), np.empty((k, f), f32), np.empty((k, m), f32) if i else None))
    aff = []
    for d, h in affines:
        X, W, dout = (rng.standard_normal(s).astype(f32) for s in ((BATCH, d), (d, h), (BATCH, h)))
        aff.append((X, W, dout, np.empty((BATCH, h), f32), np.empty((d, h), f32), np.empty((BATCH, d), f32)))

    def run():
        for W, cols, da, out, dW, dcols in work:
            np.matmul(W, cols, out=out)
            np.matmul(cols, da.T, out=dW)  # the faster of the two layouts of dW (xpdl uses it)
            if dcols is not None:
                np.matmul(W.T, da, out=dcols)
        for X, W, dout, out, dW, dX in aff:
            np.matmul(X, W, out=out)
            np.matmul(X.T, dout, out=dW)
            np.matmul(dout, W.T, out=dX)

    return run


def must_exist_bytes(cfg, net):
    """Parameters, gradients, Adam's m and v, the batch, and the activations a backward pass reads."""
    params = sum(v.nbytes for v in net.params.values())
    convs, affines = conv_shapes(cfg)
    acts = 0
    for _, f, m, _, _ in convs:
        acts += f * m * 4 + f * m // 4 * 4  # conv/relu output and the pooled output
        if cfg["norm"]:
            acts += f * m * 4  # normalized values
    acts += sum(BATCH * h * 4 for _, h in affines)
    batch = BATCH * math.prod(IMAGE) * 4
    cols = [k * m * 4 for k, _, m, _, _ in convs]
    return {"params": params, "grads": params, "adam": 2 * params, "batch": batch, "activations": acts,
            "total": 4 * params + batch + acts, "im2col": cols}  # fmt: skip


def measure_memory(cfg, X, y, Xb, yb):
    gc.collect()
    tracemalloc.start()
    try:
        net, tr = build_xpdl(cfg, X, y)
        data_bytes = tracemalloc.get_traced_memory()[0] - sum(v.nbytes for v in net.params.values())
        for _ in range(2):
            tr.step(Xb, yb)
        gc.collect()
        tracemalloc.reset_peak()
        tr.step(Xb, yb)
        peak = tracemalloc.get_traced_memory()[1] - data_bytes
    finally:
        tracemalloc.stop()
    return peak, must_exist_bytes(cfg, net)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="three-layer,conv-bn")
    p.add_argument("--repeats", type=int, default=10, help="rounds of each contender (median reported)")
    p.add_argument("--steps", type=int, default=3, help="steps per timed repetition")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--memory", action="store_true")
    p.add_argument("--no-torch", action="store_true")
    args = p.parse_args(argv)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    torch = None
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:
            print("torch not installed: no PyTorch comparison")
    rng = np.random.default_rng(1)
    X = rng.standard_normal((BATCH, *IMAGE)).astype(np.float32)
    y = rng.integers(CLASSES, size=BATCH)
    print(f"batch {BATCH}, {IMAGE}, float32, Adam; {args.threads} threads; numpy {np.__version__}"
          + (f", torch {torch.__version__}" if torch else ""))  # fmt: skip
    for name in args.config.split(","):
        cfg = CONFIGS[name]
        net, tr = build_xpdl(cfg, X, y)
        Xb, yb = net.as_input(X), net.as_labels(y, BATCH)
        contenders = {"xpdl": lambda tr=tr, Xb=Xb, yb=yb: float(tr.step(Xb, yb)), "floor": build_floor(cfg)}
        if torch is not None:
            model, opt, loss_fn = build_torch(cfg)
            tX, ty = torch.from_numpy(X), torch.from_numpy(y)

            def torch_step(model=model, opt=opt, loss_fn=loss_fn, tX=tX, ty=ty):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(tX), ty)
                loss.backward()
                opt.step()
                return loss.item()

            contenders["torch"] = torch_step
        for f in contenders.values():  # warm up: compile, allocate buffers
            for _ in range(3):
                f()
        times = {k: [] for k in contenders}
        for _ in range(args.repeats):
            for k, f in contenders.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    f()
                times[k].append((time.perf_counter() - t0) / args.steps)
        med = {k: statistics.median(v) for k, v in times.items()}
        line = f"{name:<12} " + "  ".join(f"{k} {1e3 * v:7.1f} ms" for k, v in med.items())
        if "torch" in med:
            line += f"  | xpdl/torch {med['xpdl'] / med['torch']:.2f}x"
        line += f"  xpdl/floor {med['xpdl'] / med['floor']:.2f}x"
        if "torch" in times:
            ratios = [a / b for a, b in zip(times["xpdl"], times["torch"])]
            line += f"  (per-round xpdl/torch min {min(ratios):.2f} max {max(ratios):.2f})"
        print(line)
        if args.memory:
            peak, req = measure_memory(cfg, X, y, Xb, yb)
            mib = 1 << 20
            cols = ", ".join(f"{c / mib:.1f}" for c in req["im2col"])
            print(f"{'':<12} peak step memory {peak / mib:.1f} MiB vs must exist {req['total'] / mib:.1f} MiB "
                  f"({peak / req['total']:.2f}x; params {req['params'] / mib:.1f} MiB x4 with grads and Adam, "
                  f"activations {req['activations'] / mib:.1f} MiB); "
                  f"im2col buffers {cols} MiB, plus one col2im buffer shared by the blocks after the first, "
                  "as large as the largest of theirs")  # fmt: skip


if __name__ == "__main__":
    main()
