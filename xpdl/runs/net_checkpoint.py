"""Checkpoints of :class:`xpdl.FullyConnectedNet`: the format of :mod:`xpdl.runs.checkpoint` bound to the net.

:data:`SPEC` tells the format what a net's metadata must describe (its config
checked by :func:`xpdl.fc_net.check_config`, the arrays of
:func:`xpdl.fc_net.state_shapes`, the update rules of :mod:`xpdl.updater`), so nothing is
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

from xpdl import updater
from xpdl.fc_net import FullyConnectedNet, check_config, state_shapes
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


def param_names(config: dict[str, Any]) -> list[str]:
    """The trainable arrays of a net (``W``, ``b``, ``gamma``, ``beta``): state arrays that are not statistics."""
    return [name for name in state_shapes(config) if "." not in name]


def _update_rules() -> dict[str, tuple[dict[str, Any], tuple[str, ...]]]:
    return {name: (dict(updater.DEFAULTS[name]), tuple(updater.STATE_KEYS[name])) for name in updater.UPDATE_RULES}


#: The checkpoint spec of :class:`FullyConnectedNet` (any run settings, any dataset name).
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
    """:func:`xpdl.runs.checkpoint.load_checkpoint` of a :class:`FullyConnectedNet` checkpoint."""
    return checkpoint.load_checkpoint(path, spec)


def build_model(
    ckpt: dict[str, Any], backend: Any = None, which: str = "model", seed: int | None = 0
) -> FullyConnectedNet:
    """A new :class:`FullyConnectedNet` on ``backend`` holding the checkpoint's ``which`` arrays.

    ``which`` is ``"model"`` (the current weights) or ``"best"`` (training files).
    """
    return checkpoint.build_model(ckpt, FullyConnectedNet, backend, which=which, seed=seed)
