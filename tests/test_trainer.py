"""Trainer: shuffled epochs, accuracy checks, the best model, errors, and whole runs across backends."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, host

import xpdl


def blobs(n, d=6, c=3, seed=0):
    """Separable Gaussian blobs: (n, d) float64 features, (n,) labels."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, d)) * 3
    y = rng.integers(c, size=n)
    return centers[y] + rng.standard_normal((n, d)), y


def make(backend, n_train=55, batch_size=10, num_epochs=3, net_kw=None, model=None, **kw):
    X, y = blobs(n_train + 30)
    data = {"X_train": X[:n_train], "y_train": y[:n_train], "X_val": X[n_train:], "y_val": y[n_train:]}
    args = dict(
        input_dim=6,
        hidden_dims=[16, 16],
        num_classes=3,
        dropout=0.8,
        use_batchnorm=True,
        weight_scale=0.1,
        seed=3,
        dtype="float64",
        backend=backend,
    )
    args.update(net_kw or {})
    net = model or xpdl.FullyConnectedNet(**args)
    opts = dict(
        update_rule="adam",
        updater_config={"learning_rate": 1e-2},
        batch_size=batch_size,
        num_epochs=num_epochs,
        verbose=False,
        seed=11,
    )
    opts.update(kw)
    return xpdl.Trainer(net, data, **opts)


def test_each_epoch_is_a_permutation_without_replacement(backend):
    tr = make(backend, n_train=50, batch_size=10)
    seen = np.concatenate([host(tr.batch_indices(t)) for t in range(tr.iterations_per_epoch)])
    assert sorted(seen) == list(range(50))
    second = np.concatenate([host(tr.batch_indices(t)) for t in range(5, 10)])
    assert sorted(second) == list(range(50)) and not np.array_equal(seen, second)


def test_epoch_ends_are_found_when_n_is_not_a_multiple_of_the_batch(backend):
    """The seed compared a float modulo with 0 and missed every epoch end for N = 55, batch 10."""
    tr = make(backend, n_train=55, batch_size=10, num_epochs=3, lr_decay=0.5)
    tr.train()
    assert tr.iterations_per_epoch == 5 and tr.t == 15
    assert tr.epoch == 3
    assert len(tr.val_acc_history) == 1 + 3  # after the first iteration, then every epoch end (the last included)
    assert tr.lr_history[-1] == pytest.approx(1e-2 * 0.5**3)
    assert len(tr.loss_history) == 15


def test_best_model_restores_batchnorm_statistics_too(backend):
    """The seed restored params only, mixing the best weights with the last running statistics."""
    seen = []

    def keep_scores(trainer):
        seen.append((trainer.val_acc_history[-1], host(trainer.model.loss(trainer.X_val)).copy()))

    tr = make(backend, num_epochs=6, on_epoch_end=keep_scores, updater_config={"learning_rate": 3e-2})
    tr.train()
    best = max(seen, key=lambda s: s[0])  # first epoch with the best accuracy wins ties
    assert_close(tr.model.loss(tr.X_val), best[1], rtol=1e-12)
    for i, bn in enumerate(tr.model.bn_params, start=1):
        assert_close(bn["running_mean"], tr.best_state[f"bn{i}.running_mean"], rtol=0)


def test_params_survive_a_run_whose_validation_accuracy_stays_zero(backend):
    """The seed left model.params == {} when val accuracy never rose above 0."""
    tr = make(
        backend,
        net_kw={"use_batchnorm": False, "dropout": 0},
        update_rule="sgd",
        updater_config={"learning_rate": 0.0},
        num_epochs=1,
    )
    pred = tr.model.predict(tr.X_val)
    tr.y_val = tr.model.backend.asarray((pred + 1) % 3)
    before = {k: host(v).copy() for k, v in tr.model.params.items()}
    tr.train()
    assert tr.val_acc_history == [0.0] * len(tr.val_acc_history)
    assert set(tr.model.params) == set(before)
    for k, v in before.items():
        assert np.array_equal(host(tr.model.params[k]), v)


def test_a_diverging_loss_stops_training_and_keeps_the_best_params(backend):
    tr = make(
        backend,
        net_kw={"use_batchnorm": False, "dropout": 0, "weight_scale": 10.0},
        update_rule="sgd",
        updater_config={"learning_rate": 1e300},
        num_epochs=5,
    )
    with pytest.raises(FloatingPointError, match=r"iteration \d+"), np.errstate(all="ignore"):
        tr.train()
    assert all(np.all(np.isfinite(host(v))) for v in tr.model.params.values())


def test_step_returns_a_0d_loss_on_the_device(backend):
    tr = make(backend)
    X, y = tr.X_train[:10, ...], tr.y_train[:10]
    loss = tr.step(X, y)
    assert tuple(loss.shape) == () and backend.owns(loss)
    assert np.isfinite(float(loss))


def test_unknown_arguments_and_rules_are_refused_before_anything_changes(backend):
    with pytest.raises(TypeError, match="learningrate"):
        make(backend, learningrate=1)
    with pytest.raises(ValueError, match="update_rule.*'adamax'"):
        make(backend, update_rule="adamax")
    with pytest.raises(ValueError, match=r"y: expected labels in \[0, 3\)"):
        xpdl.Trainer(
            make(backend).model,
            {
                "X_train": np.ones((4, 6)),
                "y_train": np.array([0, 1, 2, 3]),
                "X_val": np.ones((1, 6)),
                "y_val": np.array([0]),
            },
        )


def test_training_learns_separable_blobs(backend):
    tr = make(backend, n_train=300, batch_size=50, num_epochs=5)
    tr.train()
    assert tr.best_val_acc >= 0.9


def test_twenty_steps_give_the_same_losses_on_every_backend(backend, other_backend):
    """float64, batch norm, dropout and Adam: the same seed gives the same run everywhere."""
    ref = make(other_backend, n_train=40, batch_size=10, num_epochs=5)
    run = make(backend, n_train=40, batch_size=10, num_epochs=5)
    ref.train()
    run.train()
    assert len(run.loss_history) == 20
    np.testing.assert_allclose(run.loss_history, ref.loss_history, rtol=1e-10, atol=0)
    assert run.val_acc_history == ref.val_acc_history
    for k in ref.model.params:
        assert_close(run.model.params[k], host(ref.model.params[k]), rtol=1e-9, atol=1e-12)


def test_state_round_trip_continues_exactly(backend):
    """Stopping after epoch 2, restoring the state into a fresh trainer and training on equals one run."""
    whole = make("numpy", n_train=40, num_epochs=4)
    whole.train()
    saved = {}

    def keep_state(trainer):
        if trainer.epoch == 2:
            saved.update(trainer.get_state())

    first = make("numpy", n_train=40, num_epochs=4, on_epoch_end=keep_state)
    first.train()
    resumed = make(backend, n_train=40, num_epochs=4)
    resumed.model.rng.set_state({"key": 1, "counter": 0})  # overwritten by set_state
    resumed.set_state(saved)
    resumed.train()
    np.testing.assert_allclose(resumed.loss_history, whole.loss_history, rtol=1e-12)
    assert resumed.val_acc_history == whole.val_acc_history
    for k in whole.model.params:
        assert_close(resumed.model.params[k], whole.model.params[k], rtol=1e-10, atol=1e-14)


def test_a_loss_that_diverges_at_once_leaves_the_starting_parameters(backend):
    tr = make(
        backend,
        net_kw={"use_batchnorm": False, "dropout": 0, "weight_scale": 1e200},
        update_rule="sgd",
        updater_config={"learning_rate": 1e30},
        num_epochs=1,
    )
    before = {k: host(v).copy() for k, v in tr.model.params.items()}
    with pytest.raises(FloatingPointError, match="iteration 1 .*parameters training started from"):
        with np.errstate(all="ignore"):
            tr.train()
    for k, v in before.items():
        assert np.array_equal(host(tr.model.params[k]), v)


@pytest.mark.parametrize(
    "kw,error,match",
    [
        (
            {"updater_config": {"learnin_rate": 1e-3}},
            ValueError,
            r"updater_config: unknown key 'learnin_rate' for update rule 'adam'; known keys: learning_rate",
        ),
        ({"updater_config": {"learning_rate": -1}}, ValueError, r"updater_config\['learning_rate'\]: expected"),
        ({"batch_size": 0}, ValueError, "batch_size: expected an int >= 1, got 0"),
        ({"batch_size": 2.5}, TypeError, "batch_size: expected an int >= 1, got 2.5"),
        ({"lr_decay": "x"}, TypeError, "lr_decay: expected a finite number > 0, got 'x'"),
        ({"num_epochs": -1}, ValueError, "num_epochs: expected an int >= 0, got -1"),
    ],
)
def test_trainer_refuses_nonsense_before_anything_changes(backend, kw, error, match):
    model = make(backend).model
    before = {k: host(v).copy() for k, v in model.params.items()}
    with pytest.raises(error, match=match):
        make(backend, model=model, **kw)
    assert all(np.array_equal(host(model.params[k]), v) for k, v in before.items())


def test_a_trainer_follows_its_net_to_another_backend(backend, other_backend):
    tr = make(other_backend, n_train=40, num_epochs=2)
    tr.train()
    tr.model.to(backend)
    tr.num_epochs = 4
    tr.train()  # data, update-rule state and the best model follow the net
    assert all(backend.owns(v) for v in tr.model.params.values())
    assert backend.owns(tr.X_train) and backend.owns(tr.updater_configs["W1"]["m"])
    assert len(tr.loss_history) == 4 * tr.iterations_per_epoch
