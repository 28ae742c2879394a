"""Scalar activations for the Numba kernels, written once, in the argument's
precision.

``exp(x)``, ``tanh(x)``, ``sigmoid(x)``, ``softplus(x)``, ``silu(x)`` and
``log1p_unit(e)`` are plain Python
functions (usable and testable without Numba) with a Numba ``overload`` that
compiles them inline for ``float32`` and ``float64`` arguments. The overload
builds every constant in the argument's own dtype: a bare ``1.0`` literal would
make Numba promote float32 arithmetic to float64 (slower, and not what the
float32 NumPy reference computes). ``exp`` is :func:`exp_poly` for float32 (a
polynomial with its exponent bits built by hand: branch-free, so loops around it
vectorise; within 1 ulp) and libm's for float64; tanh, σ and softplus use it.

    tanh|x| = (1 − e) / (1 + e),  e = exp(−2|x|) ≤ 1     (no overflow; one exp,
                                   several times faster than np.tanh in @njit)
            = x (1 − x²/3 + 2x⁴/15 − 17x⁶/315)          for |x| < s (the series:
                                   1 − e cancels there, losing eps/(2|x|) relative)
    σ(x)    = 1 / (1 + e^{−x})  for x ≥ 0,  e^{x} / (1 + e^{x}) otherwise
    softplus(x) = max(x, 0) + log1p(e^{−|x|})
    silu(x) = x σ(x)
    log1p_unit(e) = log1p(e) for e ∈ [0, 1]: in float32 2 atanh(s) = 2s (1 + s²/3 +
                    s⁴/5 + s⁶/7 + s⁸/9), s = e / (2 + e), for e ≤ √2 − 1, and
                    ln 2 + 2 atanh((e − 1)/(e + 3)) above (|s| ≤ 0.172 both ways:
                    the next term is below 4e-9 relative), blended as σ is;
                    in float64 libm's log1p

In float32 the Numba tanh and σ compute both sides of each case and blend them
with a 0/1 weight (no branch, so a loop around them vectorises with
:func:`exp_poly`); in float64 they branch, with libm's exp. The series'
threshold ``s`` balances its truncation (≈ 0.022 |x|⁸ relative) against the exp
form's cancellation (≈ eps / (2|x|)): s = 0.02 in float64 and 0.2 in float32
give a relative error ≤ 7 eps and ≤ 3 eps for every |x| ≤ 1 (measured against
mpmath; the exp form alone reaches 120 eps at |x| = 1e-3 and 1500 eps at 1e-4 in
float64, 2800 eps at 1e-4 in float32).

NaN in, NaN out (every branch propagates it). This module imports nothing from
the rest of minirec; it is tested against :mod:`minirec._math`.
"""

from __future__ import annotations

import functools
import math
import warnings
from decimal import Decimal, localcontext

import numpy as np
from numba import njit, types
from numba.core.errors import NumbaIRAssumptionWarning
from numba.extending import overload

# the one fast-math flag of the kernels that use it: contract a*b + c into a fused
# multiply-add (one rounding instead of two, so never less accurate; no
# reassociation, no change to NaN/inf); measured at (4, 2048, 256, 16) float32 in
# the selective scan: forward −10 to −20 % (the Horner steps of exp_poly)
CONTRACT = {"contract"}

# exp_poly inlined into more than one loop of a kernel (the diagonal cells' gate
# loops) trips Numba's pedantic SSA check on its conditional expressions and its
# Horner loop ("variable '..._exp_poly_..._p_2.1' is not in scope"): the compiled
# code is right (every kernel is tested against its NumPy definition), and written
# without them (an LLVM select, a loop-free Horner overload) the selective scan's
# forward measured 12–15 % slower (min over 300 calls at (8, 512, 64, 64) float32,
# three fresh processes each), so exp_poly stays as it is and only this message,
# about exp_poly's own variables, is hidden
warnings.filterwarnings("ignore", message=r"(?s).*exp_poly.*is not in scope",
                        category=NumbaIRAssumptionWarning)

# |x| below which tanh is its series (module docstring), per precision
TANH_SERIES_BELOW = {np.dtype(np.float64): 0.02, np.dtype(np.float32): 0.2}
_C3, _C5, _C7 = 1.0 / 3.0, 2.0 / 15.0, 17.0 / 315.0  # tanh's Taylor coefficients


@functools.cache  # per call of a kernel wrapper it cost 0.12 ms (Decimal ln 2)
def exp_constants(dtype) -> tuple:
    """``(coef, con)`` for :func:`exp_poly` in ``dtype``.

    * ``coef``: ``1/j!`` for j = 0..n, n the smallest degree with Taylor
      remainder ``(ln2/2)^{n+1} / (n+1)! · √2`` below ``eps/4``.
    * ``con = (log2 e, ln2_hi, ln2_lo, lo, hi, 0, inf)``: ``ln2_hi`` is ln 2
      rounded to few enough bits that ``k · ln2_hi`` is exact for every
      exponent ``k`` of the dtype, ``ln2_lo = ln 2 − ln2_hi`` (from a 40-digit
      ln 2); ``[lo, hi] = [(kmin + 1) ln2, (kmax + 1) ln2]``, the inputs for
      which ``k − 1`` is a normal exponent (below: 0, above: ``inf``).
    """
    dtype = np.dtype(dtype)
    f = dtype.type
    info = np.finfo(dtype)
    eps = float(info.eps)
    n = 1
    while (math.log(2) / 2) ** (n + 1) / math.factorial(n + 1) * math.sqrt(2) >= eps / 4:
        n += 1
    coef = tuple(f(1 / math.factorial(j)) for j in range(n + 1))
    kmin, kmax = int(info.minexp), int(info.maxexp) - 1    # normal exponents of 2^k
    kbits = max(-kmin, kmax + 1).bit_length()               # |k| < 2^kbits
    hi_bits = info.nmant + 1 - kbits                        # k·ln2_hi fits the mantissa
    with localcontext() as ctx:
        ctx.prec = 40
        ln2 = Decimal(2).ln()
        ln2_hi = float(round(ln2 * 2 ** hi_bits) / Decimal(2 ** hi_bits))
        ln2_lo = float(ln2 - Decimal(ln2_hi))
    con = (f(1 / math.log(2)), f(ln2_hi), f(ln2_lo), f((kmin + 1) * math.log(2)),
           f((kmax + 1) * math.log(2)), f(0), f(np.inf))
    return coef, con


def _pow2(k):
    """``2^k`` for an integral float ``k`` in the normal range (numba only)."""
    raise NotImplementedError("numba only")


@overload(_pow2, inline="always")
def _pow2_numba(k):
    # IEEE 754: binary32 has 23 mantissa bits and exponent bias 127, binary64 52
    # and 1023. The low bits of k + (2^23 + 127) are k + 127, which shifted left
    # by 23 is the exponent field of 2^k.
    if k == types.float32:
        big32 = np.float32(2.0 ** 23 + 127)  # a float32 constant (no float64 value inside)

        def impl(k):
            bits = np.float32(k + big32).view(np.int32)
            return np.int32(bits << 23).view(np.float32)
        return impl
    if k == types.float64:
        big64 = np.float64(2.0 ** 52 + 1023)

        def impl(k):
            bits = np.float64(k + big64).view(np.int64)
            return np.int64(bits << 52).view(np.float64)
        return impl
    return None


@njit(cache=True, error_model="numpy", inline="always", fastmath=CONTRACT)
def exp_poly(x, coef, con):
    """``e^x`` in ``x``'s dtype, branch-free, so that a loop around it vectorises
    (``np.exp`` in ``@njit`` is a libm call per element, which stops that):
    Cody–Waite reduction ``x = k ln2 + r``, ``|r| ≤ ln2/2``, the Taylor
    polynomial of ``e^r`` to the degree whose remainder is below a quarter ulp
    (7 for float32, 13 for float64), times ``2^{k−1}`` built from its exponent
    bits. Within 1 ulp of the correctly rounded exp (tested); ``±inf`` and NaN as
    ``np.exp``; results below ``2^{kmin+1}`` (``2.4e-38`` in float32) are 0
    instead of subnormal. ``(coef, con) = exp_constants(dtype)``."""
    log2e, ln2_hi, ln2_lo, lo, hi, zero, inf = con
    xc = x if x > lo else lo
    xc = xc if xc < hi else hi
    k = np.floor(xc * log2e + coef[2])          # coef[2] = 1/2!: k = round(x / ln2)
    r = (xc - k * ln2_hi) - k * ln2_lo          # x − k ln2, |r| ≤ ln2/2
    p = coef[len(coef) - 1]
    for j in range(len(coef) - 2, -1, -1):      # Horner: e^r
        p = p * r + coef[j]
    y = (p + p) * _pow2(k - coef[0])              # 2p 2^{k−1}: finite up to the largest float
    y = y if x >= lo else zero                  # below the normal range: 0 (no subnormals)
    y = y if x <= hi else inf
    return y if x == x else x                   # NaN stays NaN



_EXP32 = None  # exp_constants(np.float32), made on first use


def exp(x):
    """``e^x``: in ``@njit`` code :func:`exp_poly` for float32 (vectorises, within
    1 ulp), ``np.exp`` (libm) for float64, so float64 results are libm's."""
    return math.exp(x)


@overload(exp, inline="always")
def _exp_nb(x):
    global _EXP32
    if x == types.float32:
        if _EXP32 is None:
            _EXP32 = exp_constants(np.float32)
        coef, con = _EXP32

        def impl32(x):
            return exp_poly(x, coef, con)
        return impl32
    if x == types.float64:
        def impl64(x):
            return np.exp(x)
        return impl64
    return None


def tanh(x):
    """``tanh(x)`` from one ``exp``, or its series near 0 (float64)."""
    a = abs(x)
    if a < TANH_SERIES_BELOW[np.dtype(np.float64)]:
        a2 = a * a
        return x * (1.0 - a2 * (_C3 - a2 * (_C5 - a2 * _C7)))
    e = math.exp(-2.0 * a)
    y = (1.0 - e) / (1.0 + e)
    return y if x >= 0 else -y


def sigmoid(x):
    """``σ(x)`` without overflow."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def softplus(x):
    """``log(1 + e^x)`` without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def silu(x):
    """``x σ(x)``."""
    return x * sigmoid(x)


def _float_type(x):
    if isinstance(x, types.Float):
        return np.dtype(str(x)).type
    return None


@overload(tanh, inline="always")
def _tanh_nb(x):
    ft = _float_type(x)
    if ft is None:
        return None
    one, m2 = ft(1.0), ft(-2.0)
    s = ft(TANH_SERIES_BELOW[np.dtype(ft)])
    c3, c5, c7 = ft(_C3), ft(_C5), ft(_C7)

    if ft is np.float32:
        def impl32(x):
            # branch-free on |x| (both forms, blended by the 0/1 weight of the
            # test), the sign put back last; with exp_poly the loop around it
            # vectorises (module docstring)
            a = abs(x)
            w = ft(a < s)                    # 1 for the series, 0 for the exp form
            am = min(a, s)                   # the series' argument, kept finite
            a2 = am * am
            series = am * (one - a2 * (c3 - a2 * (c5 - a2 * c7)))
            e = exp(m2 * a)
            y = (one - e) / (one + e)        # NaN for NaN: w = 0 keeps it
            return math.copysign(w * series + (one - w) * y, x)  # ±0 kept
        return impl32

    def impl(x):
        a = abs(x)
        if a < s:  # NaN < s is False: NaN takes the exp form
            a2 = a * a
            return x * (one - a2 * (c3 - a2 * (c5 - a2 * c7)))  # the sign of x, ±0 kept
        e = exp(m2 * a)
        y = (one - e) / (one + e)
        if x < 0:
            return -y
        return y  # x ≥ 0, or NaN (y is NaN then)
    return impl


@overload(sigmoid, inline="always")
def _sigmoid_nb(x):
    ft = _float_type(x)
    if ft is None:
        return None
    one, zero = ft(1.0), ft(0.0)

    if ft is np.float32:
        def impl32(x):
            e = exp(-abs(x))                 # ≤ 1: e^{x} for x < 0, e^{−x} else
            neg = ft(x < zero)               # a 0/1 weight instead of a branch
            return (neg * e + (one - neg)) / (one + e)   # 1/(1+e), or e/(1+e) for x < 0
        return impl32

    def impl(x):
        if x < 0:
            e = exp(x)
            return e / (one + e)
        return one / (one + exp(-x))
    return impl


def log1p_unit(e):
    """``log1p(e)`` for ``e ∈ [0, 1]`` (the softplus term ``log1p(e^{−|x|})``)."""
    return math.log1p(e)


_LN2 = 0.6931471805599453
_SQRT2_M1 = 0.41421356237309503
_ATANH = (1.0 / 3.0, 1.0 / 5.0, 1.0 / 7.0, 1.0 / 9.0)


@overload(log1p_unit, inline="always")
def _log1p_unit_nb(e):
    ft = _float_type(e)
    if ft is None:
        return None
    if ft is np.float32:
        one, two, three = ft(1.0), ft(2.0), ft(3.0)
        ln2, cut = ft(_LN2), ft(_SQRT2_M1)
        c3, c5, c7, c9 = (ft(c) for c in _ATANH)

        def impl32(e):
            s1 = e / (two + e)                     # 1 + e = (1 + s1)/(1 − s1)
            s2 = (e - one) / (e + three)           # (1 + e)/2 = (1 + s2)/(1 − s2)
            z1, z2 = s1 * s1, s2 * s2
            p1 = one + z1 * (c3 + z1 * (c5 + z1 * (c7 + z1 * c9)))
            p2 = one + z2 * (c3 + z2 * (c5 + z2 * (c7 + z2 * c9)))
            w = ft(e > cut)                        # a 0/1 weight instead of a branch
            return w * (ln2 + two * s2 * p2) + (one - w) * (two * s1 * p1)
        return impl32

    def impl(e):                    # libm's, as float64 softplus has always used
        return np.log1p(e)
    return impl


@overload(softplus, inline="always")
def _softplus_nb(x):
    ft = _float_type(x)
    if ft is None:
        return None
    zero = ft(0.0)

    if ft is np.float32:   # the vectorising log1p (libm's log1pf: ~28 ns a call)
        def impl32(x):
            m = max(x, zero)  # NaN: whichever max keeps, the log1p term is NaN
            return m + log1p_unit(exp(-abs(x)))
        return impl32

    def impl(x):
        m = max(x, zero)  # NaN: whichever max keeps, the log1p term is NaN
        return m + np.log1p(exp(-abs(x)))
    return impl


@overload(silu, inline="always")
def _silu_nb(x):
    ft = _float_type(x)
    if ft is None:
        return None

    def impl(x):
        return x * sigmoid(x)
    return impl
