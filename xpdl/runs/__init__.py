"""Run folders and checkpoints: the files a training run leaves, written atomically and read as untrusted input.

``checkpoint`` is the format (arrays and checked metadata, ``schema`` its
checker), ``net_checkpoint`` binds it to :class:`xpdl.FullyConnectedNet`,
``folder`` holds run folders and their lock, ``history`` writes ``history.json``
and the checkpoints while a Trainer trains, ``atomic`` writes files whole or not
at all. Nothing here imports the datasets or the plots.

```python
from xpdl.runs import build_model, load_checkpoint

ckpt = load_checkpoint("runs/deep/best.npz")       # checks everything, builds nothing
net = build_model(ckpt, backend="numpy")           # any backend, whatever trained it
```
"""

from xpdl.runs.checkpoint import CheckpointError, CheckpointSpec
from xpdl.runs.folder import RunFolder, RunFolderError
from xpdl.runs.net_checkpoint import (
    SPEC,
    build_model,
    load_checkpoint,
    restore_trainer,
    save_checkpoint,
    save_model,
    spec_with_settings,
)

__all__ = [
    "SPEC",
    "CheckpointError",
    "CheckpointSpec",
    "RunFolder",
    "RunFolderError",
    "build_model",
    "load_checkpoint",
    "restore_trainer",
    "save_checkpoint",
    "save_model",
    "spec_with_settings",
]
