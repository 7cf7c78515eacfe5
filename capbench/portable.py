"""Arithmetic that gives the same bits on every CPU, for numbers that must not depend on the machine.

numpy's transcendental functions (power, exp, log) run SIMD kernels chosen by the CPU (AVX-512,
AVX2, NEON, ...), whose last bit differs from one another and from the C library's; basic
IEEE operations (+, -, *, /) are correctly rounded in every SIMD width. Functions here use only
those, plus exact ones (rint, ldexp), so their results are the same everywhere.
"""

from __future__ import annotations

import decimal
import functools
import math

import numpy as np

from capbench.errors import InputError

# power_pair keeps |k| ≤ 1100 in x = k·log_base(2) + r, so k times a 32-bit constant is exact; past 1100 binary orders
# of magnitude every result is 0 or inf anyway.
_POWER_OCTAVES = 1100
# Taylor coefficients of exp (Python's int division rounds 1/j! correctly), highest first: 1/j! for j = 12, 10, …, 2
# (even) and j = 13, 11, …, 3 (odd). For |t| ≤ ln(2)/2 the first omitted term, t¹⁴/14!, is 4e-18 (0.04 ulp).
# 0-d arrays: numpy converts them faster than Python floats.
_EXP_EVEN = [np.array(1 / math.factorial(j)) for j in range(12, 0, -2)]
_EXP_ODD = [np.array(1 / math.factorial(j + 1)) for j in range(12, 0, -2)]


@functools.lru_cache(maxsize=16)
def _log_constants(base: float) -> tuple[np.ndarray, ...]:
    """Return log2(base), log_base(2) as a 32-bit head plus a tail, ln(base), and the range of x power_pair reduces.

    60-digit decimal arithmetic runs in software, so it gives the same digits on every machine; the
    C library's log may differ in the last bit between builds. The constants are 0-d arrays, which
    numpy converts faster than floats.

    Raises:
        InputError: ``base`` is not a positive finite number other than 1.
    """
    if not 0 < base < math.inf or base == 1:
        raise InputError(f"base is {base!r}; use a positive finite odds base other than 1 (CapArena uses 10)")
    context = decimal.Context(prec=60)
    ln_base = context.ln(decimal.Decimal(base))
    step = context.divide(context.ln(decimal.Decimal(2)), ln_base)
    mantissa, exponent = math.frexp(float(step))
    head = math.ldexp(math.floor(mantissa * 2**32), exponent - 32)
    tail = context.subtract(step, decimal.Decimal(head))
    limit = _POWER_OCTAVES * abs(float(step))
    return tuple(np.array(float(c)) for c in (1 / step, head, tail, ln_base, -limit, limit))


def power_pair(base: float, x: np.ndarray) -> np.ndarray:
    """Return ``base**x`` and ``base**-x`` for a 1-D array ``x`` as the rows of one array, the same bits on any CPU.

    numpy's power, exp and log run SIMD kernels (AVX-512, AVX2, NEON…) picked by the CPU, and their
    last bit differs from the C library's pow, so Elo ratings would depend on the machine. Here only
    +, -, *, / (correctly rounded in every SIMD width), rint and ldexp (exact) touch the data:
    x = k·log_base(2) + r (Cody and Waite: x - k·head is exact), t = r·ln(base) with |t| ≤ ln(2)/2,
    exp(±t) from the even and odd parts of its degree-13 Taylor polynomial, then ldexp(·, ±k).
    Measured: within 1.3 ulp of the exact power and 1 ulp of math.pow. |x| past the float range
    gives inf or 0, and NaN stays NaN.
    """
    to_octaves, head, tail, ln_base, lowest, highest = _log_constants(base)
    # Overflow to inf and NaN's cast to an exponent are expected; the results are right.
    with np.errstate(over="ignore", invalid="ignore"):
        x = x.clip(lowest, highest)
        k = np.rint(x * to_octaves)
        t = ((x - k * head) - k * tail) * ln_base
        g = t * t
        # exp(±t) = 1 ± t + t²·(even ± t·odd), even = 1/2! + t²/4! + …, odd = 1/3! + t²/5! + …, by Horner
        # in t². Separate 1-D passes: numpy's broadcasting loops are slower than two contiguous ones.
        even = g * _EXP_EVEN[0]
        odd = g * _EXP_ODD[0]
        for c_even, c_odd in zip(_EXP_EVEN[1:-1], _EXP_ODD[1:-1], strict=True):
            even += c_even
            even *= g
            odd += c_odd
            odd *= g
        even += _EXP_EVEN[-1]
        odd += _EXP_ODD[-1]
        odd *= t
        out = np.empty((2, x.size))
        np.add(even, odd, out=out[0])
        np.subtract(even, odd, out=out[1])
        out *= g
        out[0] += t
        out[1] -= t
        out += 1
        exponent = k.astype(np.intc)
        np.ldexp(out[0], exponent, out=out[0])
        np.ldexp(out[1], -exponent, out=out[1])
    return out
