"""The counter-based generator: NumPy's Philox stream, the same words on every backend, restorable state."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import host

from xpdl.rng import Generator, keep_threshold, philox4x64_numpy


@pytest.mark.parametrize("key,counter", [(0, 0), (12345678901234567890123, 5), (2**128 - 1, 2**64 - 2)])
def test_reference_philox_matches_numpy(key, counter):
    raw = np.random.Philox(key=key, counter=counter).random_raw(12).reshape(3, 4)
    ctr = [counter + 1 + j for j in range(3)]
    counters = np.array([[(c >> (64 * k)) & (2**64 - 1) for k in range(4)] for c in ctr], dtype=np.uint64)
    assert np.array_equal(philox4x64_numpy(counters, key), raw)


def test_words_follow_numpy_stream_layout():
    g = Generator(99)
    words = g.random_uint32((3, 7), like=np.zeros(1))
    raw = np.random.Philox(key=99, counter=0).random_raw(12)
    expected = np.stack([raw & 0xFFFFFFFF, raw >> 32], axis=1).reshape(-1)[:21].astype(np.uint32)
    assert np.array_equal(words.reshape(-1), expected)
    assert g.counter == 3  # ceil(21 / 8) blocks


def test_same_seed_same_words_on_every_backend(backend, other_backend):
    a = Generator(2024).random_uint32((33, 5), like=backend.zeros((1,), "float32"))
    b = Generator(2024).random_uint32((33, 5), like=other_backend.zeros((1,), "float32"))
    assert backend.owns(a) and other_backend.owns(b)
    assert np.array_equal(host(a), host(b))


def test_state_round_trip_reproduces_the_stream(backend):
    g = Generator(7)
    like = backend.xp.zeros(1)
    g.random_uint32((10,), like=like)
    g.standard_normal((4,))
    state = g.get_state()
    first = host(g.random_uint32((50,), like=like))
    g2 = Generator(0)
    g2.set_state(state)
    assert np.array_equal(host(g2.random_uint32((50,), like=like)), first)


def test_normal_draws_advance_the_state():
    g = Generator(1)
    a = g.standard_normal((5,))
    b = g.standard_normal((5,))
    assert not np.array_equal(a, b)
    assert np.array_equal(Generator(1).standard_normal((5,)), a)


def test_keep_threshold_is_exact():
    assert keep_threshold(0.5) == 2**31
    assert keep_threshold(1.0) == 2**32
    assert keep_threshold(0.25) == 2**30
    words = np.arange(0, 2**32, 2**20, dtype=np.uint64)
    assert np.mean(words < keep_threshold(0.3)) == pytest.approx(0.3, abs=1e-3)


@pytest.mark.parametrize("seed", [-1, 2**128, 1.5, "1", True])
def test_bad_seed_is_refused(seed):
    with pytest.raises((TypeError, ValueError), match="seed"):
        Generator(seed)
