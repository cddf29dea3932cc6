"""A counter-based random generator that draws the same numbers on every backend.

:class:`Generator` is Philox4x64-10 (Salmon et al., "Parallel random numbers: as
easy as 1, 2, 3", SC 2011) with a 128-bit key and a 256-bit counter. Its state is
two Python integers, readable and restorable with :meth:`Generator.get_state` /
:meth:`Generator.set_state`.

The stream is defined here (:func:`host_philox_uint32`: ``numpy.random.Philox`` on
the host), and a draw lands on the namespace and device of the array it is drawn
``like``. A backend may register a faster source of the same words for its arrays
(:func:`register_word_source`): CuPy's backend registers one CUDA kernel that
reproduces the stream word for word, so no host mask is copied to the GPU each
step. This module imports no backend.

Stream layout (shared by both): a draw of ``n`` 32-bit words uses ``ceil(n / 8)``
Philox blocks; block ``j`` encrypts counter ``c + 1 + j`` (NumPy increments before
it encrypts) and yields 4 uint64 words; word ``k`` of the draw is the low
(``k`` even) or high (``k`` odd) half of uint64 word ``k // 2``. The generator's
counter then advances by the number of blocks used.

Dropout keeps an element when its 32-bit word is below ``keep_threshold(p)``: an
integer comparison, exact and identical on every device.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np

MASK64 = (1 << 64) - 1
WORDS32_PER_BLOCK = 8

# Philox4x64 constants (Random123).
PHILOX_M0 = 0xD2E7470EE14C6C93
PHILOX_M1 = 0xCA5A826395121157
PHILOX_W0 = 0x9E3779B97F4A7C15
PHILOX_W1 = 0xBB67AE8584CAA73B


class Generator:
    """Philox4x64-10 stream: ``key`` (128-bit int) and ``counter`` (256-bit int).

    ``seed=None`` draws a key from the operating system's entropy.
    """

    def __init__(self, seed: int | None = None) -> None:
        if seed is None:
            seed = int.from_bytes(os.urandom(16), "little")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
        if not 0 <= int(seed) < 2**128:
            raise ValueError(f"seed: expected 0 <= seed < 2**128, got {seed}")
        self.key = int(seed)
        self.counter = 0

    def get_state(self) -> dict[str, int]:
        """The whole state: ``{"key": int, "counter": int}``."""
        return {"key": self.key, "counter": self.counter}

    def set_state(self, state: dict[str, int]) -> None:
        """Restore a state from :meth:`get_state`."""
        key, counter = int(state["key"]), int(state["counter"])
        if not (0 <= key < 2**128 and 0 <= counter < 2**256):
            raise ValueError(f"state: key must be < 2**128 and counter < 2**256, got {state!r}")
        self.key, self.counter = key, counter

    def _numpy_bitgen(self) -> np.random.Philox:
        return np.random.Philox(key=self.key, counter=self.counter)

    def random_uint32(self, shape: tuple[int, ...], like: Any, rows: tuple[int, int] | None = None) -> Any:
        """Random uint32 words of ``shape`` on the namespace and device of array ``like``.

        ``rows=(first, total)`` draws rows ``first .. first + shape[0] - 1`` of a draw of
        shape ``(total, *shape[1:])``: the same words that draw puts there, found by
        skipping ahead in the counter (no other row is made), and the generator advances
        by the whole draw. Data-parallel ranks draw their rows of one batch's mask this
        way, so the masks do not depend on the number of ranks.
        """
        shape = tuple(shape)
        if rows is None:
            return philox_uint32(self.key, self.advance(math.prod(shape)), shape, like)
        first, total = (int(r) for r in rows)
        if not (shape and 0 <= first and first + shape[0] <= total):
            raise ValueError(
                f"rows: expected (first, total) with 0 <= first and first + {shape[0] if shape else '?'}"
                f" <= total for shape {shape}, got {rows!r}"
            )
        per_row = math.prod(shape[1:])
        counter = self.advance(total * per_row)
        skip, offset = divmod(first * per_row, WORDS32_PER_BLOCK)
        words = philox_uint32(self.key, (counter + skip) % 2**256, (offset + math.prod(shape),), like)
        return array_api_compat.array_namespace(words).reshape(words[offset:], shape)

    def advance(self, n: int) -> int:
        """Reserve the blocks of a draw of ``n`` 32-bit words; returns the counter the draw starts from."""
        blocks = -(-n // WORDS32_PER_BLOCK)
        counter, self.counter = self.counter, (self.counter + blocks) % 2**256
        return counter

    def standard_normal(self, shape: tuple[int, ...]) -> np.ndarray:
        """Host float64 N(0, 1) samples (NumPy's ziggurat on this Philox stream).

        Used for initial weights, drawn once on the host and moved, so every
        backend starts from the same numbers.
        """
        bitgen = self._numpy_bitgen()
        out = np.random.Generator(bitgen).standard_normal(shape)
        ctr = bitgen.state["state"]["counter"]
        self.counter = sum(int(c) << (64 * i) for i, c in enumerate(ctr))
        return out


#: Faster sources of the same words: ``(owns(like), words(key, counter, shape))`` pairs, first match wins.
_WORD_SOURCES: list[tuple[Callable[[Any], bool], Callable[[int, int, tuple[int, ...]], Any]]] = []


def register_word_source(owns: Callable[[Any], bool], words: Callable[[int, int, tuple[int, ...]], Any]) -> None:
    """Let ``words(key, counter, shape)`` make the draws of arrays for which ``owns(like)`` is true.

    ``words`` must return exactly :func:`host_philox_uint32`'s words, on the array's device.
    A backend registers itself once, when it is created.
    """
    if not any(o == owns for o, _ in _WORD_SOURCES):
        _WORD_SOURCES.append((owns, words))


def host_philox_uint32(key: int, counter: int, shape: tuple[int, ...]) -> np.ndarray:
    """uint32 Philox4x64-10 words of ``shape`` on the host: block j encrypts ``counter + 1 + j``.

    The definition of the stream (layout in the module docstring), made by NumPy's own Philox.
    """
    n = math.prod(shape)
    raw = np.random.Philox(key=key, counter=counter).random_raw(-(-n // WORDS32_PER_BLOCK) * 4)
    return raw.astype("<u8", copy=False).view("<u4")[:n].reshape(shape)


def philox_uint32(key: int, counter: int, shape: tuple[int, ...], like: Any) -> Any:
    """:func:`host_philox_uint32`'s words on the namespace and device of array ``like``."""
    for owns, words in _WORD_SOURCES:
        if owns(like):
            return words(key, counter, shape)
    if type(like) is np.ndarray:
        return host_philox_uint32(key, counter, shape)
    xp = array_api_compat.array_namespace(like)
    return xp.asarray(host_philox_uint32(key, counter, shape), device=array_api_compat.device(like))


def keep_threshold(p: float) -> int:
    """The integer ``t`` with ``word < t`` true for a fraction ``p`` of 32-bit words.

    ``t = ceil(p * 2**32)``, exact (``p * 2**32`` is exact in binary floating point).
    ``p == 1`` gives ``2**32``: every word is kept.
    """
    return math.ceil(float(p) * 2**32)


def philox4x64_numpy(counters: np.ndarray, key: int, rounds: int = 10) -> np.ndarray:
    """Reference Philox4x64-``rounds`` on the host: ``counters`` (n, 4) uint64 -> (n, 4) uint64.

    Written out step by step, like the CUDA kernel, so the two can be read side
    by side; tested against ``numpy.random.Philox``.
    """
    ctr = [counters[:, i].astype(np.uint64) for i in range(4)]
    k0, k1 = np.uint64(key & MASK64), np.uint64(key >> 64)
    with np.errstate(over="ignore"):
        for r in range(rounds):
            if r:
                k0 = k0 + np.uint64(PHILOX_W0)
                k1 = k1 + np.uint64(PHILOX_W1)
            hi0, lo0 = _mulhilo64(np.uint64(PHILOX_M0), ctr[0])
            hi1, lo1 = _mulhilo64(np.uint64(PHILOX_M1), ctr[2])
            ctr = [hi1 ^ ctr[1] ^ k0, lo1, hi0 ^ ctr[3] ^ k1, lo0]
    return np.stack(ctr, axis=1)


def _mulhilo64(a: np.uint64, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """High and low 64 bits of the 128-bit product ``a * b`` (uint64 arithmetic)."""
    m32 = np.uint64(0xFFFFFFFF)
    s32 = np.uint64(32)
    a_lo, a_hi = a & m32, a >> s32
    b_lo, b_hi = b & m32, b >> s32
    ll = a_lo * b_lo
    lh = a_lo * b_hi
    hl = a_hi * b_lo
    hh = a_hi * b_hi
    mid = (ll >> s32) + (lh & m32) + (hl & m32)
    hi = hh + (lh >> s32) + (hl >> s32) + (mid >> s32)
    return hi, a * b
