"""Fast training steps: the same math as the reference ``xp`` path, in fewer passes over memory.

:func:`make_step` picks the fastest implementation that applies to a trainer:

- ``"numpy-fused"`` (NumPy backend with numba installed, a
  :class:`~xpdl.fc_net.FullyConnectedNet`): matrix products straight into
  preallocated buffers (``np.matmul(..., out=...)``), batch norm + ReLU + dropout
  as one compiled pass forward and two backward (:mod:`xpdl.cpu_kernels`), no
  input gradient for the first layer, and every update rule as one in-place
  compiled pass per parameter (weights, gradient and state read once).
- ``"cupy-fused-update"`` (CuPy backend): the reference forward/backward on the
  GPU, without the first layer's input gradient, then each parameter's update
  rule as one in-place elementwise CUDA kernel (:mod:`xpdl.cuda_kernels`).
- ``None``: the reference path (:meth:`FullyConnectedNet.loss_and_grads` and the
  functions of :mod:`xpdl.updater`), used for every other namespace, where numba
  is missing, and when ``XPDL_FUSED=0``.

Fused steps update ``params`` and the update-rule state arrays in place; the
dict entries keep their identity, so checkpoints and ``Trainer.get_state`` see the
same keys and values as with the reference path. Tests compare both paths.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from xpdl import cpu_kernels
from xpdl.arrays import namespace
from xpdl.rng import keep_threshold
from xpdl.updater import STATE_KEYS, UPDATE_RULES, fill_defaults


def make_step(trainer: Any) -> Any:
    """The fused step for ``trainer`` (an object with ``step(X, y) -> loss``), or None for the reference path."""
    from xpdl.fc_net import FullyConnectedNet

    if os.environ.get("XPDL_FUSED", "1") == "0":
        return None
    model = trainer.model
    if type(model) is not FullyConnectedNet or trainer.update_rule_name not in UPDATE_RULES:
        return None
    if model.backend.name == "numpy" and cpu_kernels.AVAILABLE:
        return NumpyFusedStep(trainer)
    if model.backend.is_gpu:
        return CupyFusedUpdate(trainer)
    return None


def describe_paths() -> str:
    """One line naming the step implementations usable in this process."""
    cpu = "numpy-fused (numba)" if cpu_kernels.AVAILABLE else "numpy reference (numba not installed)"
    return f"CPU: {cpu}; CuPy: cupy-fused-update; others: reference xp"


def prepare_config(rule: str, config: dict, w: Any) -> dict:
    """``config`` with the rule's defaults and its state arrays (zeros like ``w``), as the reference sets them."""
    fill_defaults(rule, config)
    for key in STATE_KEYS[rule]:
        if config.get(key) is None:
            config[key] = namespace(w=w).zeros_like(w)
    return config


class NumpyFusedStep:
    """The fused NumPy training step of a FullyConnectedNet (see the module docstring)."""

    name = "numpy-fused"

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.model = trainer.model
        self.rule = trainer.update_rule_name
        self._batch = -1

    def _buffers(self, n: int) -> None:
        """(Re)allocate the per-batch-size workspaces: activations, masks and gradients."""
        if n == self._batch:
            return
        net = self.model
        dt = np.dtype(net.dtype)
        dims = [net.input_dim, *net.hidden_dims, net.num_classes]
        self.xhat = [np.empty((n, h), dt) if net.use_batchnorm else None for h in net.hidden_dims]
        self.a = [np.empty((n, h), dt) for h in net.hidden_dims]
        self.h = [np.empty((n, h), dt) for h in net.hidden_dims]
        self.keep = [np.empty((n, h) if net.use_dropout else (0, 0), np.uint8) for h in net.hidden_dims]
        self.inv_std = [np.empty(h, np.float64) for h in net.hidden_dims]
        self.dh = [np.empty((n, h), dt) for h in net.hidden_dims]
        self.grads = {k: np.empty(v.shape, dt) for k, v in net.params.items()}
        self.no_words = np.zeros((0, 0), np.uint32)
        self.no_keep = np.zeros((0, 0), np.uint8)
        self.scores = np.empty((n, dims[-1]), dt)
        self._batch = n

    def step(self, X: Any, y: Any) -> Any:
        """One training step on device arrays X (N, D) and y (N,) int64; returns the 0-d loss."""
        net = self.model
        self._buffers(X.shape[0])
        net._set_mode("train")
        p = net.dropout if net.use_dropout else 1.0
        self.dropout = net.use_dropout and keep_threshold(p) < 2**32  # p == 1 keeps all, draws nothing
        self.threshold = min(keep_threshold(p), 2**32 - 1)
        self.scale = 1.0 / p if self.dropout else 1.0
        scores = self._forward(X)
        loss, dscores = _softmax_loss(scores, y)
        reg_sq = self._backward_and_update(X, dscores)
        if net.reg:
            loss = loss + 0.5 * net.reg * reg_sq
        return np.asarray(loss, dtype=net.dtype)

    def _forward(self, X: np.ndarray) -> np.ndarray:
        """Train-mode forward pass; keeps what backward needs in the buffers; returns the scores (N, C)."""
        net, params = self.model, self.model.params
        prev = X
        for i in range(1, net.num_layers):
            a, h = self.a[i - 1], self.h[i - 1]
            np.matmul(prev, params[f"W{i}"], out=a)
            words = net.rng.random_uint32(a.shape, like=a) if self.dropout else self.no_words
            keep = self.keep[i - 1] if self.dropout else self.no_keep
            if net.use_batchnorm:
                bn = net.bn_params[i - 1]
                cpu_kernels.bn_relu_dropout_forward(
                    a, params[f"b{i}"], params[f"gamma{i}"], params[f"beta{i}"], bn["running_mean"],
                    bn["running_var"], float(bn.get("momentum", 0.9)), float(bn.get("eps", 1e-5)),
                    words, self.threshold, self.scale, self.xhat[i - 1], h, keep, self.inv_std[i - 1])
            else:
                cpu_kernels.bias_relu_dropout_forward(a, params[f"b{i}"], words, self.threshold, self.scale, h, keep)
            prev = h
        L = net.num_layers
        scores = np.matmul(prev, params[f"W{L}"], out=self.scores)
        scores += params[f"b{L}"]
        return scores

    def _backward_and_update(self, X: np.ndarray, dscores: np.ndarray) -> float:
        """Backward pass from ``dscores`` (N, C); each layer is updated as soon as its gradients exist.

        A layer's weights are updated only after they have served for the input
        gradient, while its fresh gradients are still in cache. Returns ``sum(W**2)``
        of the weights before the update (for the regularization loss).
        """
        net, params, g = self.model, self.model.params, self.grads
        L = net.num_layers
        prev = self.h[L - 2] if L > 1 else X
        np.matmul(prev.T, dscores, out=g[f"W{L}"])
        np.sum(dscores, axis=0, out=g[f"b{L}"])
        dh = self.dh[L - 2] if L > 1 else None
        if L > 1:
            np.matmul(dscores, params[f"W{L}"].T, out=dh)
        reg_sq = self.update((f"W{L}", f"b{L}"))
        for i in range(L - 1, 0, -1):
            da = self.a[i - 1]  # the affine output is not needed any more: reuse it for its gradient
            keep = self.keep[i - 1] if self.dropout else self.no_keep
            if net.use_batchnorm:
                cpu_kernels.bn_relu_dropout_backward(dh, self.h[i - 1], self.xhat[i - 1], params[f"gamma{i}"],
                                                     self.inv_std[i - 1], keep, self.scale, da, g[f"gamma{i}"],
                                                     g[f"beta{i}"], g[f"b{i}"])
            else:
                cpu_kernels.relu_dropout_backward(dh, self.h[i - 1], keep, self.scale, da, g[f"b{i}"])
            np.matmul((self.h[i - 2] if i > 1 else X).T, da, out=g[f"W{i}"])
            if i > 1:  # the first layer's input gradient is never needed
                dh = self.dh[i - 2]
                np.matmul(da, params[f"W{i}"].T, out=dh)
            names = (f"W{i}", f"b{i}", f"gamma{i}", f"beta{i}") if net.use_batchnorm else (f"W{i}", f"b{i}")
            reg_sq += self.update(names)
        return reg_sq

    def update(self, names: tuple[str, ...]) -> float:
        """Apply the update rule to the parameters ``names`` in place; returns ``sum(W**2)`` over their weights."""
        net, trainer = self.model, self.trainer
        total = 0.0
        for p in names:
            w = net.params[p]
            config = prepare_config(self.rule, trainer.updater_configs[p], w)
            scalar = w.dtype.type  # hyperparameters in the parameter's dtype, as the reference computes
            wf, gf = w.reshape(-1), self.grads[p].reshape(-1)
            if net.reg and p.startswith("W"):  # L2 on weights: loss term from the old weights, then g += reg * w
                total += float(np.dot(wf, wf))
                gf += scalar(net.reg) * wf
            lr = float(config["learning_rate"])
            if self.rule == "adam":
                config["t"] += 1
                t, b1, b2 = int(config["t"]), float(config["beta1"]), float(config["beta2"])
                cpu_kernels.adam_update(
                    wf, gf, config["m"].reshape(-1), config["v"].reshape(-1), scalar(lr / (1.0 - b1**t)),
                    scalar(b1), scalar(1.0 - b1), scalar(b2), scalar(1.0 - b2), scalar(config["epsilon"]),
                    scalar(1.0 / (1.0 - b2**t)))
            elif self.rule == "sgd":
                cpu_kernels.sgd_update(wf, gf, scalar(lr))
            elif self.rule == "sgd_momentum":
                cpu_kernels.momentum_update(wf, gf, config["velocity"].reshape(-1), scalar(lr),
                                            scalar(config["momentum"]))
            else:
                decay = float(config["decay_rate"])
                cpu_kernels.rmsprop_update(wf, gf, config["cache"].reshape(-1), scalar(lr), scalar(decay),
                                           scalar(1.0 - decay), scalar(config["epsilon"]))
        return total


def _softmax_loss(scores: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of ``scores`` (N, C) and its gradient (log-sum-exp, in place on ``scores``)."""
    n = scores.shape[0]
    scores -= scores.max(axis=1, keepdims=True)
    picked = np.take_along_axis(scores, y.reshape(n, 1), axis=1)
    np.exp(scores, out=scores)
    sums = scores.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(sums) - picked))
    scores /= sums
    scores[np.arange(n), y] -= 1.0
    scores /= n
    return loss, scores


class CupyFusedUpdate:
    """The CuPy step: reference forward/backward on the GPU, then one fused update kernel per parameter."""

    name = "cupy-fused-update"

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.model = trainer.model
        self.rule = trainer.update_rule_name

    def step(self, X: Any, y: Any) -> Any:
        from xpdl import cuda_kernels

        net, trainer = self.model, self.trainer
        loss, grads = net.loss_and_grads(X, y, input_grad=False)
        for p, w in net.params.items():
            config = prepare_config(self.rule, trainer.updater_configs[p], w)
            cuda_kernels.fused_update(self.rule, w, grads[p], config)
        return loss
