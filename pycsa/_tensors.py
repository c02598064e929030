"""Accept torch tensors or numpy arrays; hand results back in the caller's kind."""
from __future__ import annotations

import hashlib
import math
from typing import NamedTuple

import numpy as np
import torch

# The largest squared row norm features may have. |q·x| <= ||q||·||x|| and
# ||q - x||² <= 2||q||² + 2||x||², so with every row's ||x||² at most a quarter of
# float32's largest value the inner products and squared distances of any two rows,
# and every partial sum of them, stay finite in float32 (norms up to about 9.2e18).
MAX_ROW_NORM_SQ = float(torch.finfo(torch.float32).max) / 4


def as_tensor(x, name: str) -> tuple[torch.Tensor, bool]:
    """Return ``(tensor, was_numpy)``; numpy arrays are wrapped without a copy where possible."""
    if isinstance(x, torch.Tensor):
        return x, False
    if isinstance(x, np.ndarray):
        if x.dtype == np.float16 or x.dtype.kind in "fiub":
            return torch.from_numpy(np.ascontiguousarray(x)), True
        raise TypeError(f"{name}: numpy dtype {x.dtype} is not supported")
    raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def to_caller(x: torch.Tensor, was_numpy: bool):
    """Give ``x`` back as numpy when the caller passed numpy."""
    if not was_numpy:
        return x
    x = x.detach().cpu()
    if x.dtype == torch.bfloat16:  # numpy has no bfloat16
        x = x.float()
    return x.numpy()


def check_features(x: torch.Tensor, name: str, *, allow_empty: bool = True) -> None:
    """Features are 2-D floating rows of finite values whose squared norms are at most
    :data:`MAX_ROW_NORM_SQ`: larger ones are finite but their products are not, and
    would come back as NaN scores or -1 indices instead of an error."""
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D (items x dim) array, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point dtype, got {x.dtype}")
    if x.shape[1] == 0:  # no feature has anything to compare: every score would be 0
        raise ValueError(f"{name}: has 0 columns (features of dimension 0), shape {tuple(x.shape)}")
    if not allow_empty and x.shape[0] == 0:
        raise ValueError(f"{name}: is empty")
    if not x.numel():
        return
    # aminmax: one pass, no copy (x.abs() would copy), and NaN propagates to both ends
    low, high = torch.stack(torch.aminmax(x)).double().tolist()
    top = max(-low, high)
    if not math.isfinite(top):
        raise ValueError(f"{name}: contains NaN or inf")
    # top² · dim bounds every squared row norm; only when it is not enough are the norms computed
    if top * top * x.shape[1] > MAX_ROW_NORM_SQ:
        norm_sq = max_row_norm_sq(x)
        if norm_sq > MAX_ROW_NORM_SQ:
            raise ValueError(f"{name}: has rows of norm {math.sqrt(norm_sq):.3g}, too large for float32 "
                             f"(their inner products overflow; the limit is {math.sqrt(MAX_ROW_NORM_SQ):.2g}): "
                             "L2-normalise the features, or divide them by a common factor")


def max_row_norm_sq(x: torch.Tensor) -> float:
    """The largest squared row norm, in float64 (blocks of 32 MB: no full float64 copy)."""
    step = max(1, (1 << 22) // max(1, x.shape[1]))
    return max(float(x[s:s + step].double().pow(2).sum(1).max()) for s in range(0, x.shape[0], step))


def unit_exponent(*xs: torch.Tensor) -> int:
    """e such that the largest |value| in ``xs``, divided by 2^e, lies in [0.5, 1); 0 when it
    lies in [2^-16, 2^16] already (or is 0). Clamped to ±120, so that 2^-e fits float32.
    See :func:`rescaled`."""
    top = 0.0
    for x in xs:
        if x.numel():
            low, high = torch.stack(torch.aminmax(x)).double().tolist()
            top = max(top, -low, high)
    if top == 0 or 2.0 ** -16 <= top <= 2.0 ** 16:
        return 0
    return max(-120, min(120, math.frexp(top)[1]))


def rescaled(x: torch.Tensor, *, per_row: bool = False):
    """``(x / p, p)`` for a power of two p that brings the largest |value| of ``x`` (of each
    row, as a rows x 1 float64 tensor, with ``per_row``) into [0.5, 1) when it lies outside
    [2^-16, 2^16]; else ``(x, 1.0)``, x itself.

    For the computations that do not depend on a common factor of their inputs (a ranking
    by inner products, a normalised graph): scaling by a power of two is exact, so they
    give the same result on x / p, and in the window float32 has room for the products,
    squares and powers of the values, where huge features would overflow and tiny ones
    fall into subnormals (or to zero where the CPU flushes them).
    """
    if not x.numel():
        return x, 1.0
    if per_row:
        top = row_abs_max(x).unsqueeze(1)
        inside = (top == 0) | ((top >= 2.0 ** -16) & (top <= 2.0 ** 16))
        if bool(inside.all()):
            return x, 1.0
        e = torch.where(inside, 0, torch.frexp(top).exponent).clamp(-120, 120)
        one, w = torch.ones_like(top), _wide(x)
        return w * torch.ldexp(one, -e).to(w.dtype), torch.ldexp(one, e)
    e = unit_exponent(x)
    return (x, 1.0) if e == 0 else (_wide(x) * 2.0 ** -e, 2.0 ** e)


def row_abs_max(x: torch.Tensor) -> torch.Tensor:
    """The largest |value| of each row of a 2-D ``x``, in float64."""
    low, high = torch.aminmax(x, dim=1)  # no copy of x, unlike x.abs()
    return torch.maximum(-low, high).double()


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in float32 when it is half precision, whose range may not hold the scale factor."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def check_finite(x: torch.Tensor, name: str) -> None:
    """ValueError naming ``name`` if ``x`` holds NaN or inf.

    One reduction instead of an elementwise mask: NaN or inf anywhere makes the sum
    non-finite. A finite sum proves every value finite; a non-finite one is
    confirmed element-wise (a sum can overflow on its own). A plain sum: asking
    for another dtype would first copy the whole array.
    """
    if x.numel() and not bool(torch.isfinite(x.sum())):
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name}: contains NaN or inf")


def check_distinct_rows(idx: torch.Tensor, name: str, n: int) -> None:
    """IndexError naming ``name`` if a row of ``idx`` lists an item twice: a ranking is an
    order of distinct database items, and every re-ranker takes the depth it returns from
    it (so a row deeper than the ``n`` database rows, which must repeat one, is caught
    here too, before a search or top-k asked for more than n items fails on it)."""
    if idx.shape[1] < 2:
        return
    s = torch.sort(idx, dim=1).values
    same = s[:, 1:] == s[:, :-1]
    if bool(same.any()):
        row, col = (int(v) for v in same.nonzero()[0])
        deeper = f"; its depth {idx.shape[1]} exceeds the {n} database rows" if idx.shape[1] > n else ""
        raise IndexError(f"{name}: row {row} lists database item {int(s[row, col])} more than once{deeper}")


def same_rows(Q: torch.Tensor, X: torch.Tensor) -> bool:
    """True when the queries are the database's rows, in order (the leave-one-out protocol:
    every item a query against all items): the same memory, or equal values."""
    if Q.shape != X.shape or Q.device != X.device:
        return False
    if Q.data_ptr() == X.data_ptr() and Q.stride() == X.stride() and Q.dtype == X.dtype:
        return True
    return bool(torch.equal(Q, X.to(Q.dtype)))


def leave_one_out(flag, Q: torch.Tensor, X: torch.Tensor, name: str = "leave_one_out") -> bool:
    """``flag`` None: detect (:func:`same_rows`); True: the caller says so (then the shapes must agree)."""
    if flag is None:
        return same_rows(Q, X)
    if flag and Q.shape != X.shape:
        raise ValueError(f"{name}: True needs the queries to be the database's rows, but queries are "
                         f"{tuple(Q.shape)} and the database {tuple(X.shape)}")
    return bool(flag)


class Fingerprint(NamedTuple):
    """What identifies an array cheaply: its layout and place in memory, torch's count of
    its in-place changes (None for numpy, which keeps none) and a hash of a sample of its rows."""

    shape: tuple
    dtype: str
    device: str
    address: int
    strides: tuple
    version: int | None
    sample: str

    def differs(self, other: "Fingerprint") -> str:
        """What tells ``other`` (an array now) apart from this one (the array then); "" if nothing."""
        if other.shape != self.shape:
            return f"shape {other.shape}, not {self.shape}"
        if other.dtype != self.dtype or other.device != self.device:
            return f"{other.dtype} on {other.device}, not {self.dtype} on {self.device}"
        if other.address != self.address or other.strides != self.strides:
            return "another array"
        if (self.version is not None and other.version is not None and other.version != self.version) \
                or other.sample != self.sample:
            return "changed in place since"
        return ""


SAMPLE_ROWS = 256


def fingerprint(x) -> Fingerprint:
    """The :class:`Fingerprint` of a numpy array or tensor.

    The sample is the bytes of 256 evenly spaced rows, so that an edit of a numpy array in
    place (which nothing counts) is seen when it touches a sampled row; torch's version
    counter sees every in-place change made through torch. Cost: 256 rows copied and hashed.
    """
    if isinstance(x, np.ndarray):
        rows = x[_sample(x.shape[0])] if x.ndim else x
        return Fingerprint(tuple(x.shape), str(x.dtype), "cpu", x.__array_interface__["data"][0], tuple(x.strides),
                           None, _digest(np.ascontiguousarray(rows)))
    t = x.detach()
    if t.dim() and t.shape[0]:
        rows = t.index_select(0, torch.from_numpy(_sample(t.shape[0])).to(t.device)).cpu()
    else:
        rows = t.cpu()
    if rows.dtype == torch.bfloat16:  # numpy has no bfloat16: hash its bits
        rows = rows.view(torch.int16)
    return Fingerprint(tuple(t.shape), str(t.dtype).removeprefix("torch."), str(t.device), t.data_ptr(),
                       tuple(s * t.element_size() for s in t.stride()), x._version,
                       _digest(np.ascontiguousarray(rows.numpy())))


def _sample(n: int) -> np.ndarray:
    """Up to SAMPLE_ROWS evenly spaced row numbers in [0, n), first and last included."""
    m = min(n, SAMPLE_ROWS)
    return np.arange(m, dtype=np.int64) * (n - 1) // max(1, m - 1)


def _digest(a: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    if a.size:  # memoryview cannot cast an array with a 0 in its shape; the shape is in the Fingerprint
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def as_device(value, name: str = "device") -> torch.device:
    """``value`` (a torch.device, "cpu", "cuda:1", ...) as a torch.device this machine has."""
    if isinstance(value, bool) or not isinstance(value, (torch.device, str, int)):
        raise TypeError(f"{name}: expected a device such as 'cpu' or 'cuda:0', got {value!r} ({type(value).__name__})")
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):  # torch's message lists every device type it was built to know
        raise ValueError(f"{name}: not a device: {value!r} (expected 'cpu', 'cuda' or 'cuda:N')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}: {value!r} but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{name}: {value!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def class_labels(labels, n: int, name: str) -> torch.Tensor:
    """Integer class labels, one per item, as int64 (negative: a distractor)."""
    # strings or None would reach torch as numpy object arrays, whose error names no argument
    if isinstance(labels, torch.Tensor):
        y, integral = labels.detach().cpu(), not (labels.is_floating_point() or labels.is_complex())
    else:
        a = np.asarray(labels)
        y, integral = a, a.dtype.kind in "biu"
    if not integral:
        raise TypeError(f"{name}: expected integer class labels, got {y.dtype}")
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"{name}: expected {n} labels (one per image), got shape {tuple(y.shape)}")
    return y.long()
