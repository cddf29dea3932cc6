"""xpdl.plots: every picture from objects users hold, the same on every backend, headless, and never piling up."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

import xpdl
from xpdl import cli, plots
from xpdl.data.datasets import load_dataset
from xpdl.runs.folder import write_json
from xpdl.runs.history import history_record

PNG = b"\x89PNG\r\n\x1a\n"
REPO = Path(xpdl.__file__).resolve().parents[1]
IMAGE_SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3)]


@pytest.fixture(scope="module")
def digits() -> dict:
    return load_dataset("digits", dtype="float64")


def train(digits: dict, backend, epochs: int = 2) -> xpdl.Trainer:
    """A small float64 net trained for ``epochs`` on ``backend`` (deterministic: same numbers on every backend)."""
    net = xpdl.FullyConnectedNet(
        input_dim=64, hidden_dims=[16], num_classes=10, weight_scale=0.05, seed=0, dtype="float64", backend=backend
    )
    trainer = xpdl.Trainer(
        net,
        digits,
        update_rule="adam",
        updater_config={"learning_rate": 3e-3},
        batch_size=100,
        num_epochs=epochs,
        seed=0,
        verbose=False,
    )
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def numpy_trainer(digits) -> xpdl.Trainer:
    return train(digits, "numpy")


def plotted(fig) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """The (x, y) data of every line of every axes of ``fig``."""
    return [
        [(np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)) for line in ax.get_lines()]
        for ax in fig.axes
    ]


def assert_same_data(fig, ref, rtol: float = 1e-9) -> None:
    got, want = plotted(fig), plotted(ref)
    assert [len(a) for a in got] == [len(a) for a in want]
    for axes_got, axes_want in zip(got, want):
        for (x, y), (x0, y0) in zip(axes_got, axes_want):
            np.testing.assert_allclose(x, x0, rtol=rtol)
            np.testing.assert_allclose(y, y0, rtol=rtol)


def history_doc(losses, val=(0.1, 0.5, 0.6), train=(0.1, 0.6, 0.7)) -> dict:
    n, checks = len(losses), len(val)
    return {
        "loss_history": list(losses),
        "loss_epochs": [(i + 1) / (n / 2) for i in range(n)],
        "check_epochs": [1 / (n / 2)] + [float(k) for k in range(1, checks)],
        "iterations_per_epoch": n // 2,
        "train_acc_history": list(train),
        "val_acc_history": list(val),
    }


# ------------------------------------------------------------------ history
def test_history_plots_the_same_on_every_backend(backend, digits, numpy_trainer):
    trainer = numpy_trainer if backend.name == "numpy" else train(digits, backend)
    fig, ref = plots.history(trainer), plots.history(numpy_trainer)
    assert isinstance(fig, plots.Figure) and len(fig.axes) == 2
    assert_same_data(fig, ref)
    loss_x, loss_y = plotted(fig)[0][0]
    assert len(loss_y) == trainer.t and loss_x[-1] == 2.0
    train_line, val_line = plotted(fig)[1][:2]
    assert list(val_line[1]) == trainer.val_acc_history and list(train_line[0]) == [1 / 11, 1.0, 2.0]


def test_history_of_a_run_folder_draws_the_same_picture_as_its_trainer(tmp_path, numpy_trainer):
    write_json(tmp_path / "history.json", history_record(numpy_trainer, {}, "cpu"))
    from_trainer = plots.render(plots.history(numpy_trainer))
    assert np.array_equal(plots.render(plots.history(tmp_path)), from_trainer)
    assert np.array_equal(plots.render(plots.history(tmp_path / "history.json")), from_trainer)
    plots.plot_curves(json.loads((tmp_path / "history.json").read_text()), tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG


def test_history_uses_a_log_scale_only_when_the_loss_spans_more_than_a_decade():
    falling = plots.history(history_doc(np.geomspace(2.3, 0.01, 40)))
    flat = plots.history(history_doc(np.linspace(2.3, 0.5, 40)))
    assert falling.axes[0].get_yscale() == "log" and "log scale" in falling.axes[0].get_ylabel()
    assert flat.axes[0].get_yscale() == "linear" and flat.axes[0].get_ylabel() == "Loss"


def test_history_draws_a_running_mean_of_the_loss():
    losses = [1.0, 3.0] * 50
    fig = plots.history(history_doc(losses))
    dots, mean = plotted(fig)[0][:2]
    np.testing.assert_array_equal(dots[1], losses)
    assert np.all(np.abs(mean[1][10:] - 2.0) < 0.5)  # a window of 4: means of 1, 3, 1, 3


def test_accuracy_axis_zooms_in_past_a_low_first_check():
    fig = plots.history(history_doc([1.0] * 40, val=(0.1, 0.95, 0.97, 0.96), train=(0.1, 0.96, 0.99, 1.0)))
    low, high = fig.axes[1].get_ylim()
    assert 0.9 < low < 0.95 and high > 1.0
    assert "first check" in fig.axes[1].get_title() and "validation 0.100" in fig.axes[1].get_title()
    spread = plots.history(history_doc([1.0] * 40, val=(0.1, 0.3, 0.6, 0.8), train=(0.1, 0.3, 0.6, 0.8)))
    assert spread.axes[1].get_ylim()[0] < 0.1 and spread.axes[1].get_title() == "Accuracy"


def test_history_marks_the_best_validation_accuracy():
    fig = plots.history(history_doc([1.0] * 40, val=(0.1, 0.8, 0.9, 0.85), train=(0.1, 0.8, 0.9, 0.95)))
    star = plotted(fig)[1][2]
    assert list(star[0]) == [2.0] and list(star[1]) == [0.9]
    assert "best validation 0.9000 (epoch 2)" in [t.get_text() for t in fig.axes[1].get_legend().get_texts()]


def test_history_says_which_argument_is_wrong(tmp_path):
    with pytest.raises(TypeError, match="source: expected a Trainer"):
        plots.history(42)
    with pytest.raises(FileNotFoundError, match="source: .*no such file or folder"):
        plots.history(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"source: .*missing \['val_acc_history'\]"):
        plots.history({k: v for k, v in history_doc([1.0] * 4).items() if k != "val_acc_history"})
    with pytest.raises(ValueError, match=r"source\['val_acc_history'\]: expected one value per check \(3\), got 2"):
        plots.history({**history_doc([1.0] * 4), "val_acc_history": [0.1, 0.2]})
    with pytest.raises(ValueError, match=r"source\['loss_epochs'\]: expected one value per loss \(4\), got 1"):
        plots.history({**history_doc([1.0] * 4), "loss_epochs": [1.0]})


# ------------------------------------------------------------------ weights
_NUMPY_WEIGHT_PIXELS: dict[tuple, np.ndarray] = {}


def weights_pixels(backend, shape) -> np.ndarray:
    net = xpdl.FullyConnectedNet(
        input_dim=int(np.prod(shape)), hidden_dims=[20, 7], num_classes=10, seed=3, backend=backend
    )
    return plots.render(plots.weights(net, shape))


@pytest.mark.parametrize("shape", IMAGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_weights_plot_the_same_on_every_backend(backend, shape):
    if shape not in _NUMPY_WEIGHT_PIXELS:
        _NUMPY_WEIGHT_PIXELS[shape] = weights_pixels("numpy", shape)
    pixels = weights_pixels(backend, shape)
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 4
    assert np.array_equal(pixels, _NUMPY_WEIGHT_PIXELS[shape])


def test_weight_grid_tiles_each_unit_scaled_to_its_largest_weight():
    W = np.zeros((4, 5))  # five 2x2 gray units
    W[:, 0] = [1, -1, 0, 0.5]
    W[:, 1] = [4, 0, 0, 0]
    grid = plots.weight_grid(W, (2, 2, 1))
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1, 1)  # 2 rows, 3 columns, 1-pixel white padding
    np.testing.assert_allclose(grid[1:3, 1:3, 0], [[1.0, 0.0], [0.5, 0.75]])
    np.testing.assert_allclose(grid[1:3, 4:6, 0], [[1.0, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(grid[4:6, 4:6, 0], 0.5)  # an all-zero unit is gray
    assert np.all(grid[0] == 1.0) and np.all(grid[:, 3] == 1.0)


def test_weight_grid_keeps_colour_channels_in_height_width_channel_order():
    W = np.zeros((12, 1))
    W[2::3, 0] = 1.0  # blue channel of every pixel of a 2x2x3 image
    grid = plots.weight_grid(W, (2, 2, 3), padding=0)
    np.testing.assert_allclose(grid, np.broadcast_to([0.5, 0.5, 1.0], (2, 2, 3)))


def test_weights_shows_at_most_max_units_and_says_so():
    net = xpdl.FullyConnectedNet(input_dim=64, hidden_dims=[300], num_classes=10, seed=0, backend="numpy")
    fig = plots.weights(net, (8, 8, 1))
    assert "the first 256 of 300 units, 8x8 each" in fig.axes[0].get_title()
    image = fig.axes[0].get_images()[0].get_array()
    assert image.shape == (16 * 9 + 1, 16 * 9 + 1)


def test_weights_of_a_softmax_classifier_can_be_titled_by_class():
    W = np.random.default_rng(0).standard_normal((64, 3))
    fig = plots.weights(W, (8, 8), class_names=["zero", "one", "two"])
    assert [ax.get_title() for ax in fig.axes[:3]] == ["zero", "one", "two"]


def test_weights_says_which_argument_is_wrong():
    W = np.ones((64, 4))
    with pytest.raises(ValueError, match=r"image_shape: expected H \* W \* C = 64 .* got \(28, 28, 1\) = 784"):
        plots.weights(W, (28, 28, 1))
    with pytest.raises(ValueError, match="image_shape: expected .* C 1 or 3"):
        plots.weights(W, (4, 4, 4))
    with pytest.raises(TypeError, match="net: expected a FullyConnectedNet"):
        plots.weights("W1", (8, 8, 1))
    with pytest.raises(ValueError, match="class_names: expected one name per first-layer unit"):
        plots.weights(W, (8, 8, 1), class_names=["a"])


# ------------------------------------------------------------------ confusion
Y_TRUE = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 1, 2, 2, 0, 2])


def test_confusion_plots_the_same_on_every_backend(backend):
    names = ["cat", "dog", "bird"]
    fig = plots.confusion(backend.asarray(Y_TRUE), backend.asarray(Y_PRED), names)
    assert np.array_equal(plots.render(fig), plots.render(plots.confusion(Y_TRUE, Y_PRED, names)))


def test_confusion_counts_rows_as_true_classes():
    fig = plots.confusion(Y_TRUE, Y_PRED, ["a", "b", "c"])
    ax = fig.axes[0]
    counts = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text()) for t in ax.texts}
    assert counts == {(0, 0): 1, (0, 1): 1, (1, 1): 3, (2, 0): 1, (2, 2): 3}
    np.testing.assert_allclose(ax.get_images()[0].get_array()[2], [0.25, 0.0, 0.75])  # fractions of the row
    assert ax.get_title() == "Confusion matrix: accuracy 0.7778 (7 / 9)"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    np.testing.assert_array_equal(plots.confusion_counts(Y_TRUE, Y_PRED, 3), [[1, 1, 0], [0, 3, 0], [1, 0, 3]])


def test_confusion_says_which_argument_is_wrong():
    with pytest.raises(ValueError, match=r"class_names: expected a name for every label up to 2, got 2"):
        plots.confusion(Y_TRUE, Y_PRED, ["a", "b"])
    with pytest.raises(ValueError, match="y_pred: expected as many labels as y_true"):
        plots.confusion(Y_TRUE, Y_PRED[:-1])
    with pytest.raises(ValueError, match="y_true: expected labels >= 0"):
        plots.confusion(-Y_TRUE, Y_PRED)
    with pytest.raises(ValueError, match="y_true: expected a 1-d array"):
        plots.confusion(Y_TRUE.reshape(3, 3), Y_PRED)


# ------------------------------------------------------------------ compare
def test_compare_plots_the_same_on_every_backend(backend, digits, numpy_trainer):
    trainer = numpy_trainer if backend.name == "numpy" else train(digits, backend)
    fig = plots.compare({"a": trainer, "b": numpy_trainer})
    assert_same_data(fig, plots.compare({"a": numpy_trainer, "b": numpy_trainer}))


def test_compare_draws_one_validation_curve_per_run_labelled_by_folder(tmp_path):
    for name, val in [("lr-1e-3", (0.1, 0.7, 0.8)), ("lr-1e-2", (0.1, 0.9, 0.85))]:
        (tmp_path / name).mkdir()
        write_json(tmp_path / name / "history.json", history_doc([2.0, 1.0, 0.5, 0.2], val=val))
    fig = plots.compare([tmp_path / "lr-1e-3", tmp_path / "lr-1e-2" / "history.json"])
    acc_ax, loss_ax = fig.axes
    labels = [t.get_text() for t in acc_ax.get_legend().get_texts()]
    assert labels == ["lr-1e-3 (best 0.8000)", "lr-1e-2 (best 0.9000)"]
    curves = [line for line in acc_ax.get_lines() if line.get_label() in labels]
    assert [list(c.get_ydata()) for c in curves] == [[0.1, 0.7, 0.8], [0.1, 0.9, 0.85]]
    assert [line.get_label() for line in loss_ax.get_lines()] == ["lr-1e-3", "lr-1e-2"]
    assert [line.get_color() for line in loss_ax.get_lines()] == [c.get_color() for c in curves]


def test_compare_says_which_argument_is_wrong():
    with pytest.raises(ValueError, match="runs: expected at least one run"):
        plots.compare([])
    with pytest.raises(TypeError, match="runs: expected a dict of label: run or a list of runs"):
        plots.compare("runs/a")


# ------------------------------------------------------------------ figures in Jupyter, headless, never piling up
def test_a_figure_shows_inline_in_jupyter_as_png():
    png = plots.confusion(Y_TRUE, Y_PRED)._repr_png_()
    assert png[:8] == PNG


def every_picture(i: int):
    """One of the four pictures, from small inputs: call ``i`` cycles through them."""
    doc = history_doc([2.0, 1.0, 0.5, 0.2, 0.1, 0.05])
    kind = i % 4
    if kind == 0:
        return plots.history(doc)
    if kind == 1:
        return plots.weights(np.ones((64, 8)), (8, 8, 1))
    if kind == 2:
        return plots.confusion(Y_TRUE, Y_PRED)
    return plots.compare([doc, doc])


def test_a_hundred_pictures_leave_no_figure_open_and_no_memory_behind():
    import matplotlib.pyplot as plt

    for i in range(8):  # warm up matplotlib's caches (fonts, text layout)
        every_picture(i)
    gc.collect()
    objects = len(gc.get_objects())
    refs = [weakref.ref(every_picture(i)) for i in range(100)]
    gc.collect()
    grown = len(gc.get_objects()) - objects
    assert all(r() is None for r in refs), "a figure is still referenced after the call returned"
    assert plt.get_fignums() == []
    # one figure kept alive would hold about 2,800 objects (0.5 MB); a hundred would hold 280,000
    assert grown < 1000, f"{grown} more objects after 100 pictures"


HEADLESS_SCRIPT = """
import sys
import numpy as np
from xpdl import plots
doc = {"loss_history": [2.0, 1.0, 0.1], "loss_epochs": [0.5, 1.0, 1.5], "check_epochs": [0.5, 1.0],
       "train_acc_history": [0.2, 0.9], "val_acc_history": [0.2, 0.8]}
out = sys.argv[1]
plots.save(plots.history(doc), out + "/history.png")
plots.save(plots.weights(np.eye(64)[:, :10], (8, 8, 1)), out + "/weights.png")
plots.save(plots.confusion([0, 1, 1], [0, 1, 0], ["a", "b"]), out + "/confusion.png")
plots.save(plots.compare({"x": doc}), out + "/compare.png")
import matplotlib
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


def test_pictures_draw_headless_on_agg_without_pyplot(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-c", HEADLESS_SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.lower().split() == ["agg", "false"]  # Agg, and pyplot was never imported
    for name in ("history", "weights", "confusion", "compare"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG


# ------------------------------------------------------------------ the command line's pictures
@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plots") / "run"
    argv = ["train", "--hidden-dims", "16", "--epochs", "2", "--backend", "numpy", "--out", str(folder), "--quiet"]
    assert cli.main(argv) == 0
    return folder


def test_train_draws_the_first_layer_weights_into_the_run_folder(small_run):
    assert (small_run / "weights.png").read_bytes()[:8] == PNG
    from xpdl.runs.net_checkpoint import build_model, load_checkpoint

    net = build_model(load_checkpoint(small_run / "best.npz"), "numpy")
    drawn = plots.render(plots.weights(net, (8, 8, 1)))
    import matplotlib.image

    assert np.array_equal((matplotlib.image.imread(small_run / "weights.png") * 255).round().astype(np.uint8), drawn)


def test_evaluate_plot_draws_the_confusion_matrix_next_to_the_run(small_run, tmp_path, capsys):
    assert cli.main(["evaluate", str(small_run), "--backend", "numpy", "--plot"]) == 0
    assert f"confusion matrix drawn into {small_run / 'confusion.png'}" in capsys.readouterr().out
    assert (small_run / "confusion.png").read_bytes()[:8] == PNG
    assert cli.main(["evaluate", str(small_run / "best.npz"), "--backend", "numpy", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "confusion.png").read_bytes()[:8] == PNG
    (tmp_path / "file").write_text("")
    assert cli.main(["evaluate", str(small_run), "--backend", "numpy", "--out", str(tmp_path / "file")]) == 2
    assert "--out " in capsys.readouterr().err


# ------------------------------------------------------------------ progress bar
def test_trainer_progress_draws_one_bar_and_verbose_keeps_its_lines(digits, capsys):
    net = xpdl.FullyConnectedNet(input_dim=64, hidden_dims=[8], num_classes=10, seed=0, backend="numpy")
    trainer = xpdl.Trainer(net, digits, batch_size=200, num_epochs=2, verbose=True, print_every=1000, progress=True)
    trainer.train()
    out, err = capsys.readouterr()
    assert "training: 100%" in err and "10/10" in err and "epoch 2/2, loss " in err and "val " in err
    assert out.splitlines()[0] == "(Iteration 1 / 10) loss: " + f"{trainer.loss_history[0]:f}"
    assert sum(line.startswith("(Epoch ") for line in out.splitlines()) == 3
    xpdl.Trainer(net, digits, batch_size=200, num_epochs=1, verbose=False).train()
    assert capsys.readouterr() == ("", "")
