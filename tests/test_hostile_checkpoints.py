"""Checkpoints are untrusted input: crafted files are refused with one CheckpointError naming the file and field.

Every case here is refused before any array is read or any net is built, in well
under a second and a few MB (the memory tests measure it with tracemalloc).
"""

from __future__ import annotations

import json
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import xpdl
from xpdl import cli
from xpdl.runs import checkpoint
from xpdl.runs.checkpoint import CheckpointError, save_checkpoint
from xpdl.runs.net_checkpoint import load_checkpoint
from xpdl.training.options import CHECKPOINT_SPEC, DEFAULTS

META = {
    "settings": {**DEFAULTS, "hidden_dims": [6, 7]},
    "preprocessing": {
        "dataset": "digits",
        "scale": 16.0,
        "mean_image": np.zeros(5, np.float32),
        "image_shape": [1, 5, 1],
        "classes": ["a", "b", "c"],
    },
}


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory) -> bytes:
    """A valid training checkpoint (adam, batch norm, 5-6-7-3) as bytes."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 5)), rng.integers(3, size=40)
    net = xpdl.FullyConnectedNet(
        input_dim=5, hidden_dims=[6, 7], num_classes=3, use_batchnorm=True, seed=0, backend="numpy"
    )
    tr = xpdl.Trainer(
        net,
        {"X_train": X[:30], "y_train": y[:30], "X_val": X[30:], "y_val": y[30:]},
        update_rule="adam",
        batch_size=10,
        num_epochs=1,
        verbose=False,
    )
    tr.train()
    path = tmp_path_factory.mktemp("hostile") / "good.npz"
    save_checkpoint(path, tr, META)
    return path.read_bytes()


@pytest.fixture
def path(tmp_path, good_bytes) -> Path:
    p = tmp_path / "ck.npz"
    p.write_bytes(good_bytes)
    return p


def entries(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(arrays.pop("meta.json").tobytes()), arrays


def rewrite(path: Path, doc: dict, arrays: dict[str, np.ndarray], manifest: bool = True) -> None:
    """Write ``doc`` and ``arrays`` as a checkpoint; ``manifest`` recomputes the array manifest to match."""
    if manifest:
        doc["arrays"] = {k: checkpoint._describe(a) for k, a in arrays.items()}
    meta = np.frombuffer(json.dumps(doc).encode(), np.uint8)
    np.savez(path, **{"meta.json": meta}, **arrays)


def edit(path: Path, change) -> None:
    doc, arrays = entries(path)
    change(doc, arrays)
    rewrite(path, doc, arrays)


def refused(path: Path, pattern: str, spec=CHECKPOINT_SPEC) -> str:
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_checkpoint(path, spec)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    return message


def peak_bytes(func) -> int:
    tracemalloc.start()
    try:
        func()
    except CheckpointError:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_the_good_file_loads_with_the_tools_settings_schema(path):
    ck = load_checkpoint(path, CHECKPOINT_SPEC)
    assert ck["config"]["normalization"] == "batchnorm" and ck["update_rule"] == "adam"


# ------------------------------------------------------------------ the archive
def test_an_extra_deflated_entry_is_refused_before_it_is_inflated(path):
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("junk.npy", bytes(30 * 2**20))  # 30 MB of zeros, about 30 KB compressed
    assert path.stat().st_size < 2**20
    refused(path, "'junk' is compressed")
    assert peak_bytes(lambda: load_checkpoint(path)) < 2 * 2**20


def test_a_recompressed_checkpoint_is_refused(path, tmp_path):
    out = tmp_path / "deflated.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    refused(out, "is compressed")


def test_a_duplicated_entry_name_is_refused(path):
    with zipfile.ZipFile(path, "a") as z, pytest.warns(UserWarning):
        z.writestr("model/W1.npy", b"x")
    refused(path, "'model/W1.npy' appears twice")


def test_an_entry_that_is_not_an_npy_array_is_refused(path):
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("../../etc/evil", b"x")
    refused(path, "is not a NAME.npy array entry")


@pytest.mark.parametrize("target", ["history.json", "curves.png"])
def test_other_run_files_are_not_checkpoints_and_no_unsafe_advice_is_given(tmp_path, target):
    other = tmp_path / target
    other.write_bytes(b"\x89PNG\r\n\x1a\n" if target.endswith("png") else b'{"loss_history": []}')
    message = refused(other, "not an .npz")
    assert "pickle" not in message


# ------------------------------------------------------------------ architecture against arrays
def test_huge_hidden_dims_are_refused_without_allocating(path):
    edit(path, lambda d, a: d["config"].update(hidden_dims=[16384, 16384]))
    refused(path, "does not fit the architecture")
    assert peak_bytes(lambda: load_checkpoint(path)) < 4 * 2**20


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        (1e12, "config: input_dim: expected a positive int"),
        (10**12, "image_shape: expected a shape of 1000000000000 values"),
        ("5", "config: input_dim"),
        (True, "config: input_dim"),
    ],
)
def test_a_bad_input_dim_is_refused_without_allocating(path, value, pattern):
    edit(path, lambda d, a: d["config"].update(input_dim=value))
    refused(path, pattern)
    assert peak_bytes(lambda: load_checkpoint(path)) < 4 * 2**20


def test_an_unknown_config_field_is_refused(path):
    edit(path, lambda d, a: d["config"].update(activation="gelu"))
    refused(path, "config.activation: unknown field")


def test_old_files_with_use_batchnorm_still_load(path):
    def old(doc, arrays):
        del doc["config"]["normalization"]
        doc["config"]["use_batchnorm"] = True

    edit(path, old)
    assert load_checkpoint(path)["config"]["normalization"] == "batchnorm"


def test_nan_weights_are_refused(path):
    def poison(doc, arrays):
        arrays["model/W2"] = arrays["model/W2"].copy()
        arrays["model/W2"][0, 0] = np.nan

    edit(path, poison)
    refused(path, "model/W2 holds NaN or infinite values")


def test_a_mean_image_of_the_wrong_length_is_refused(path):
    edit(path, lambda d, a: a.update({"preprocessing/mean_image": np.zeros(7, np.float32)}))
    refused(path, "preprocessing/mean_image does not fit the architecture")


def test_arrays_of_another_dtype_are_refused(path):
    edit(path, lambda d, a: a.update({"model/b1": a["model/b1"].astype(np.float64)}))
    refused(path, "model/b1 does not fit the architecture.*float32|<f4")


# ------------------------------------------------------------------ meta.json against its schema
def deep_json(path: Path) -> None:
    doc, arrays = entries(path)
    meta = np.frombuffer(b"[" * 200_000 + b"]" * 200_000, np.uint8)
    np.savez(path, **{"meta.json": meta}, **arrays)


def test_deeply_nested_meta_json_is_refused(path):
    deep_json(path)
    refused(path, "nests too deeply")


def test_deeply_nested_info_is_refused(path):
    nested: list = []
    for _ in range(50):
        nested = [nested]
    edit(path, lambda d, a: d.update(info={"x": nested}))
    refused(path, "info.x.*nested deeper")


def set_in(doc: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        doc = doc[key]
    doc[last] = value


SCHEMA_CASES = {
    "counter t a string": ("counters.t", "abc", r"counters\.t: expected an integer >= 0, got 'abc'"),
    "counter t negative": ("counters.t", -5, r"counters\.t: expected an integer >= 0, got -5"),
    "epoch a float": ("counters.epoch", 1.5, r"counters\.epoch"),
    "rng key negative": ("rng.key", "-1", r"rng\.key: expected a string matching"),
    "rng key an int": ("rng.key", -1, r"rng\.key: expected a string"),
    "rng key too large": ("rng.key", str(2**128), r"rng\.key: expected a decimal integer below 2\*\*128"),
    "learning rate a string": (
        "updater_scalars.W1.learning_rate",
        "fast",
        r"updater_scalars\.W1\.learning_rate: expected a finite number >= 0, got 'fast'",
    ),
    "adam t null": ("updater_scalars.b2.t", None, r"updater_scalars\.b2\.t: expected an integer >= 0, got None"),
    "batch size 0": ("settings.batch_size", 0, r"settings\.batch_size: expected an integer >= 1, got 0"),
    "unknown update rule": ("update_rule", "evil", r"update_rule: expected one of \['sgd'.*got 'evil'"),
    "lr decay a string": ("settings.lr_decay", "x", r"settings\.lr_decay: expected a finite number > 0, got 'x'"),
    "settings a list": ("settings", [], r"settings: expected an object, got \[\]"),
    "version true": ("version", True, r"version: format version True"),
    "scale 0": ("preprocessing.scale", 0, r"preprocessing\.scale: expected a finite number > 0, got 0"),
    "scale a string": ("preprocessing.scale", "x", r"preprocessing\.scale: expected a finite number > 0, got 'x'"),
    "unknown dataset": ("preprocessing.dataset", "imagenet", r"preprocessing\.dataset: expected one of \['digits'"),
    "accuracy above 1": ("history.val_acc_history", [0.5, 1.5], r"history\.val_acc_history\[1\]"),
    "loss NaN": ("history.loss_history", [float("nan")], r"history\.loss_history\[0\]: expected a finite number"),
    "backend garbage": ("settings.backend", "tpu", r"settings\.backend: expected a backend name"),
    "kind unknown": ("kind", "weights", r"kind: expected one of \['training', 'model'\]"),
    "unknown top-level field": ("extra", 1, r"extra: unknown field"),
    "missing counters": ("counters", None, r"counters: expected an object"),
}


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_a_meta_json_field_outside_the_schema_is_refused_naming_the_field(path, case):
    field, value, pattern = SCHEMA_CASES[case]
    edit(path, lambda d, a: set_in(d, field, value))
    refused(path, f"meta.json: {pattern}")


def test_a_rule_swapped_over_another_rules_state_is_refused(path):
    edit(path, lambda d, a: d.update(update_rule="sgd_momentum"))
    refused(path, r"updater_scalars\.W1\.(momentum: missing|beta1: unknown field)")


def test_state_arrays_of_another_rule_are_refused(path):
    def swap(doc, arrays):
        doc["update_rule"] = "rmsprop"
        for p, scalars in doc["updater_scalars"].items():
            doc["updater_scalars"][p] = {"learning_rate": scalars["learning_rate"], "decay_rate": 0.99, "epsilon": 1e-8}

    edit(path, swap)
    refused(path, r"state array of another update rule; 'rmsprop' keeps \['cache'\]")


def test_a_manifest_that_lies_about_an_entry_is_refused(path):
    doc, arrays = entries(path)
    doc["arrays"]["model/b1"]["crc32"] ^= 1
    rewrite(path, doc, arrays, manifest=False)
    refused(path, "'model/b1' is corrupted")


def test_a_huge_meta_json_is_refused_before_it_is_read(path, monkeypatch):
    monkeypatch.setattr(checkpoint, "MAX_META_BYTES", 1000)
    refused(path, "meta.json is .* bytes; at most 1000 are read")


def test_the_api_without_settings_schema_accepts_any_settings_object(path):
    edit(path, lambda d, a: d["settings"].update(batch_size="anything"))
    assert load_checkpoint(path)["settings"]["batch_size"] == "anything"
    refused(path, "settings.batch_size")


def test_evaluate_names_the_file_and_field_in_one_line(path, capsys):
    edit(path, lambda d, a: set_in(d, "preprocessing.scale", "x"))
    assert cli.main(["evaluate", str(path), "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "preprocessing.scale" in err


def test_a_folder_named_like_a_checkpoint_is_refused(tmp_path):
    folder = tmp_path / "dir.npz"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint file"):
        load_checkpoint(folder)


def test_input_dim_far_beyond_the_file_is_refused_from_the_manifest(path):
    def huge(doc, arrays):
        doc["config"]["input_dim"] = 10**12
        del doc["preprocessing"]["image_shape"]
        del arrays["preprocessing/mean_image"]

    edit(path, huge)
    refused(path, "model/W1 does not fit the architecture: expected shape \\(1000000000000, 6\\)")
    assert peak_bytes(lambda: load_checkpoint(path)) < 4 * 2**20
