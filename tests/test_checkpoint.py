"""Checkpoint files: round trips, exact continuation, any backend, atomic writes, and refusing bad files."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import host

import xpdl
from xpdl.runs import checkpoint
from xpdl.runs.checkpoint import CheckpointError, restore_trainer, save_checkpoint, save_model
from xpdl.runs.folder import remove_stale_temporaries
from xpdl.runs.net_checkpoint import build_model, load_checkpoint

MEAN = np.linspace(-1, 1, 5).astype(np.float32)
META = {
    "settings": {"lr": 0.01, "hidden_dims": [6, 7]},
    "preprocessing": {
        "dataset": "digits",
        "scale": 16.0,
        "mean_image": MEAN,
        "image_shape": [1, 5, 1],
        "classes": ["a", "b", "c"],
    },
}


def make(backend="numpy", num_epochs=2, **kw):
    """A small adam trainer with batch norm and dropout on three Gaussian blobs (5 features)."""
    rng = np.random.default_rng(0)
    y = rng.integers(3, size=70)
    X = (rng.standard_normal((3, 5)) * 2)[y] + rng.standard_normal((70, 5))
    data = {"X_train": X[:50], "y_train": y[:50], "X_val": X[50:], "y_val": y[50:]}
    net = xpdl.FullyConnectedNet(
        input_dim=5,
        hidden_dims=[6, 7],
        num_classes=3,
        dropout=0.7,
        use_batchnorm=True,
        weight_scale=0.3,
        seed=1,
        backend=backend,
    )
    return xpdl.Trainer(
        net,
        data,
        update_rule="adam",
        updater_config={"learning_rate": 1e-2},
        lr_decay=0.9,
        batch_size=8,
        num_epochs=num_epochs,
        verbose=False,
        seed=3,
        **kw,
    )


@pytest.fixture
def saved(tmp_path):
    """A trainer after one epoch and its checkpoint file."""
    tr = make(num_epochs=1)
    tr.train()
    tr.model.rng.set_state({"key": 2**128 - 1, "counter": 2**256 - 3})  # the widest integers survive
    path = save_checkpoint(tmp_path / "ck.npz", tr, META)
    return tr, path


def test_round_trip_keeps_every_piece_of_state(saved):
    tr, path = saved
    ck = load_checkpoint(path)
    state = tr.get_state()
    assert ck["kind"] == "training" and ck["version"] == checkpoint.FORMAT_VERSION
    assert ck["config"] == tr.model.config() and ck["update_rule"] == "adam"
    for group in ("model", "best"):
        assert set(ck[group]) == set(state[group])
        for k, v in state[group].items():
            assert ck[group][k].dtype == v.dtype and np.array_equal(ck[group][k], v)
    for p, config in state["updater"].items():
        for k, v in config.items():
            got = ck["updater"][p][k]
            assert np.array_equal(got, v) if hasattr(v, "shape") else (got == v and type(got) is type(v))
    assert ck["counters"] == state["counters"] and ck["history"] == state["history"]
    assert ck["rng"] == {"key": 2**128 - 1, "counter": 2**256 - 3}
    assert np.array_equal(ck["preprocessing"]["mean_image"], MEAN)
    assert ck["preprocessing"]["dataset"] == "digits" and ck["preprocessing"]["scale"] == 16.0
    assert ck["settings"] == META["settings"]


def test_restored_trainer_continues_bit_for_bit(tmp_path):
    whole = make(num_epochs=4)
    whole.train()

    def save_at_epoch_2(trainer):
        if trainer.epoch == 2:
            save_checkpoint(tmp_path / "ck.npz", trainer, META)

    make(num_epochs=4, on_epoch_end=save_at_epoch_2).train()
    ck = load_checkpoint(tmp_path / "ck.npz")
    resumed = restore_trainer(ck, make(num_epochs=4))
    assert resumed.t == 2 * resumed.iterations_per_epoch
    resumed.train()
    assert resumed.loss_history == whole.loss_history
    assert resumed.val_acc_history == whole.val_acc_history and resumed.lr_history == whole.lr_history
    for k, v in whole.model.state_arrays().items():
        assert np.array_equal(host(resumed.model.state_arrays()[k]), host(v)), k


def test_loaded_model_predicts_the_same_on_every_backend(saved, backend):
    tr, path = saved
    X = np.random.default_rng(5).standard_normal((40, 5))
    want = tr.model.predict(X)  # train() ended with the best model loaded
    ck = load_checkpoint(path)
    best = build_model(ck, backend, which="best")
    assert best.backend is backend
    np.testing.assert_array_equal(best.predict(X), want)
    current = build_model(ck, backend)
    for k, v in ck["model"].items():
        np.testing.assert_array_equal(host(current.state_arrays()[k]), v)


def test_training_continues_on_another_backend(saved, backend):
    _, path = saved
    tr = restore_trainer(load_checkpoint(path), make(backend, num_epochs=2))
    tr.train()
    assert tr.epoch == 2 and len(tr.val_acc_history) == 3


def test_model_file_holds_the_best_weights(saved, tmp_path):
    tr, _ = saved
    path = save_model(
        tmp_path / "best.npz", tr.model, {**META, "info": {"best_val_acc": tr.best_val_acc}}, arrays=tr.best_state
    )
    ck = load_checkpoint(path)
    assert ck["kind"] == "model" and ck["info"]["best_val_acc"] == tr.best_val_acc
    X = np.random.default_rng(6).standard_normal((30, 5))
    np.testing.assert_array_equal(build_model(ck, "numpy").predict(X), tr.model.predict(X))
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        restore_trainer(ck, make())


def test_update_rule_mismatch_is_refused(saved):
    _, path = saved
    rng = np.random.default_rng(0)
    tr = make()
    sgd = xpdl.Trainer(
        tr.model,
        {
            "X_train": rng.standard_normal((8, 5)),
            "y_train": np.zeros(8, int),
            "X_val": rng.standard_normal((4, 5)),
            "y_val": np.zeros(4, int),
        },
        update_rule="sgd",
        verbose=False,
    )
    with pytest.raises(CheckpointError, match="update rule 'adam'"):
        restore_trainer(load_checkpoint(path), sgd)


# ------------------------------------------------------------------ bad files
def entries(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def rewrite(path: Path, arrays: dict, meta_edit=None) -> None:
    arrays = dict(arrays)
    if meta_edit is not None:
        doc = json.loads(arrays["meta.json"].tobytes())
        meta_edit(doc)
        arrays["meta.json"] = np.frombuffer(json.dumps(doc).encode(), np.uint8)
    np.savez(path, **arrays)


def break_truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def break_flip_byte(path):
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("model/W1.npy")
    data[info.header_offset + 200] ^= 0xFF  # inside W1's data, past the local header and .npy header
    path.write_bytes(bytes(data))


def break_empty(path):
    path.write_bytes(b"")


def break_text(path):
    path.write_text("hello, not a checkpoint\n")


def break_foreign_npz(path):
    np.savez(path, weights=np.ones(3))


def break_single_npy(path):
    with open(path, "wb") as f:
        np.save(f, np.ones(3))


def break_pickled_entry(path):
    rewrite(path, {**entries(path), "model/W1": np.array([{"a": 1}], dtype=object)})


def break_missing_entry(path):
    arrays = entries(path)
    del arrays["updater/W2/m"]
    rewrite(path, arrays)


def break_extra_entry(path):
    rewrite(path, {**entries(path), "model/extra": np.ones(2)})


def break_changed_array(path):
    arrays = entries(path)
    arrays["best/b1"] = arrays["best/b1"] + 1  # same shape and dtype, different bytes
    rewrite(path, arrays)


def break_other_format(path):
    rewrite(path, entries(path), lambda d: d.update(format="something-else"))


def break_newer_version(path):
    rewrite(path, entries(path), lambda d: d.update(version=99))


def break_bad_json(path):
    rewrite(path, {**entries(path), "meta.json": np.frombuffer(b"{not json", np.uint8)})


def break_architecture(path):
    rewrite(path, entries(path), lambda d: d["config"].update(hidden_dims=[6, 8]))


BREAKERS = {
    "truncated": (break_truncate, "truncated or corrupted"),
    "flipped byte": (break_flip_byte, "corrupted"),
    "empty": (break_empty, "cannot be read"),
    "text file": (break_text, "cannot be read"),
    "foreign npz": (break_foreign_npz, "not an xpdl checkpoint"),
    "single npy": (break_single_npy, "not an .npz archive"),
    "pickled entry": (break_pickled_entry, "model/W1.* dtype object"),
    "missing entry": (break_missing_entry, "missing \\['updater/W2/m'\\]"),
    "extra entry": (break_extra_entry, "unexpected \\['model/extra'\\]"),
    "changed array": (break_changed_array, "best/b1.*CRC-32"),
    "other format": (break_other_format, "not an xpdl checkpoint"),
    "newer version": (break_newer_version, "version 99"),
    "bad json": (break_bad_json, "not valid JSON"),
    "architecture": (break_architecture, "not fit the architecture"),
}


@pytest.mark.parametrize("name", list(BREAKERS))
def test_bad_files_raise_checkpoint_error_naming_the_file(saved, name):
    _, path = saved
    breaker, message = BREAKERS[name]
    breaker(path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_file_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "nothing.npz")


def test_a_failed_save_leaves_the_previous_file_intact(saved, monkeypatch):
    tr, path = saved
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tr, META)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["counters"]["t"] == tr.t
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".checkpoint.npz.abc.tmp").write_bytes(b"partial")
    (tmp_path / "checkpoint.npz").write_bytes(b"keep")
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".checkpoint.npz.abc.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]
