"""Checkpoints of xpdl's nets: the format of :mod:`xpdl.runs.checkpoint` bound to the nets.

:data:`SPEC` tells the format what a net's metadata must describe (its config
checked by :func:`xpdl.fc_net.check_config`, or :func:`xpdl.cnn.check_config` when the
config says ``"model": "conv"``; the arrays of the matching ``state_shapes``; the
update rules of :mod:`xpdl.updater`), so nothing is
built to check a file. The dataset names and the run settings' schema belong to
whoever trains (:data:`xpdl.training.options.CHECKPOINT_SPEC` adds both).

```python
from xpdl.runs import build_model, load_checkpoint

ckpt = load_checkpoint("runs/deep/best.npz")       # checks everything, builds nothing
net = build_model(ckpt, backend="numpy")           # any backend, whatever trained it
```
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from xpdl import cnn, fc_net, updater
from xpdl.runs import checkpoint
from xpdl.runs.checkpoint import CheckpointError, CheckpointSpec, restore_trainer, save_checkpoint, save_model

__all__ = [
    "SPEC",
    "CheckpointError",
    "build_model",
    "load_checkpoint",
    "restore_trainer",
    "save_checkpoint",
    "save_model",
    "spec_with_settings",
]


_UNSET: Any = object()


def check_config(
    model: Any = _UNSET,
    input_dim: Any = _UNSET,
    hidden_dims: Any = _UNSET,
    num_classes: Any = _UNSET,
    dropout: Any = _UNSET,
    use_batchnorm: Any = _UNSET,
    normalization: Any = _UNSET,
    reg: Any = _UNSET,
    weight_scale: Any = _UNSET,
    dtype: Any = _UNSET,
    conv_dims: Any = _UNSET,
    filter_size: Any = _UNSET,
    groups: Any = _UNSET,
    channels_last: Any = _UNSET,
) -> dict[str, Any]:
    """A saved net's config checked by its net's ``check_config``: :mod:`xpdl.cnn`'s when ``model == "conv"``.

    Without ``model`` (every checkpoint written before conv nets existed) the config is a
    :class:`xpdl.FullyConnectedNet`'s. A field the net does not take raises TypeError.
    """
    given = {k: v for k, v in locals().items() if v is not _UNSET}
    kind = given.pop("model", None)
    if kind is None:
        return fc_net.check_config(**given)
    if kind == "conv":
        return cnn.check_config(model="conv", **given)
    raise ValueError(f"model: expected 'conv' or no model field (a fully-connected net), got {kind!r}")


def state_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The state arrays' shapes of the net ``config`` describes (see :func:`check_config`)."""
    if config.get("model") == "conv":
        return cnn.state_shapes(config)
    return fc_net.state_shapes(config)


def net_class(model: str | None = None, **config: Any) -> Any:
    """The net a checkpoint's config describes: ``ConvNet(**config)`` for ``model="conv"``, else a
    ``FullyConnectedNet``."""
    if model == "conv":
        return cnn.ConvNet(**config)
    return fc_net.FullyConnectedNet(**config)


def param_names(config: dict[str, Any]) -> list[str]:
    """The trainable arrays of a net (``W``, ``b``, ``gamma``, ``beta``): state arrays that are not statistics."""
    return [name for name in state_shapes(config) if "." not in name]


def _update_rules() -> dict[str, tuple[dict[str, Any], tuple[str, ...]]]:
    return {name: (dict(updater.DEFAULTS[name]), tuple(updater.STATE_KEYS[name])) for name in updater.UPDATE_RULES}


#: The checkpoint spec of xpdl's nets (any run settings, any dataset name).
SPEC = CheckpointSpec(
    check_config=check_config,
    state_shapes=state_shapes,
    param_names=param_names,
    update_rules=_update_rules(),
)


def spec_with_settings(settings: Any, datasets: Any = None) -> CheckpointSpec:
    """:data:`SPEC` with ``settings`` (an :mod:`xpdl.runs.schema` node) as the schema of the run settings.

    ``datasets``: the names ``preprocessing.dataset`` may take (None: any name).
    """
    return dataclasses.replace(SPEC, settings=settings, datasets=datasets)


def load_checkpoint(path: str | os.PathLike[str], spec: CheckpointSpec = SPEC) -> dict[str, Any]:
    """:func:`xpdl.runs.checkpoint.load_checkpoint` of a checkpoint of one of xpdl's nets."""
    return checkpoint.load_checkpoint(path, spec)


def build_model(ckpt: dict[str, Any], backend: Any = None, which: str = "model", seed: int | None = 0) -> Any:
    """A new net (:class:`xpdl.FullyConnectedNet` or :class:`xpdl.ConvNet`) on ``backend`` holding the
    checkpoint's ``which`` arrays.

    ``which`` is ``"model"`` (the current weights) or ``"best"`` (training files).
    """
    return checkpoint.build_model(ckpt, net_class, backend, which=which, seed=seed)
