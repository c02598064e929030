"""pycsa.ops.attention against float64 maths: awkward shapes, ragged lengths, dtypes, layouts, autograd."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pycsa
from pycsa.ops import reference
from pycsa.ops.attention import sdpa_with_lengths

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ATOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2.5e-2}
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # the output's own rounding

# (B, H, T, D): ones, primes, the CPU query block (256) and key block (512) crossed, head dims 32/64/other
SHAPES = [(1, 1, 1, 64), (2, 3, 7, 64), (3, 2, 67, 32), (1, 4, 521, 64), (2, 2, 1031, 64), (2, 1, 129, 17),
          (0, 2, 5, 64), (2, 2, 0, 64)]


def _qkv(B, H, T, D, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(2 * torch.randn(B, H, T, D, generator=g)).to(dtype).to(device) for _ in range(3)]


def _expected(q, k, v, lengths=None):
    return reference.attention(q.double().cpu(), k.double().cpu(), v.double().cpu(),
                               None if lengths is None else lengths.cpu())


@pytest.fixture(params=["auto", "kernel"])
def cpu_path(request):
    """On the CPU, batches of full sequences go to SDPA ("auto"); "kernel" holds the C++
    kernel itself to the reference on them too."""
    if request.param == "kernel":
        if not pycsa.ops.has_cpu_kernels():
            pytest.skip("no compiled CPU kernels")
        from pycsa import _C
        _C.set_attention_cpu_to_sdpa(False)
        yield request.param
        _C.set_attention_cpu_to_sdpa(True)
    else:
        yield request.param


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}T{}D{}".format(*s))
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
def test_matches_float64(shape, dtype, ragged, device, cpu_path):
    if device != "cpu" and cpu_path == "kernel":
        pytest.skip("the dense-to-SDPA choice is the CPU's")
    q, k, v = _qkv(*shape, dtype, device)
    B, _, T, _ = shape
    lengths = torch.randint(0, T + 1, (B,), generator=torch.Generator().manual_seed(1)).to(device) if ragged else None
    if cpu_path == "kernel" and not ragged:
        lengths = torch.full((B,), T)  # full lengths reach the op; None goes to SDPA before it
    out = pycsa.ops.attention(q, k, v, lengths)
    assert out.shape == q.shape and out.dtype == dtype and out.device.type == device
    assert torch.allclose(out.double().cpu(), _expected(q, k, v, lengths), rtol=RTOL[dtype], atol=ATOL[dtype])


def test_masked_keys_contribute_nothing_and_rows_past_length_are_zero(device):
    q, k, v = _qkv(3, 2, 40, 64, torch.float32, device)
    lengths = torch.tensor([40, 13, 0], device=device)
    out = pycsa.ops.attention(q, k, v, lengths)
    # changing what lies past a length changes nothing
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 13:] = 1e3
    v2[1, :, 13:] = float("nan")
    out2 = pycsa.ops.attention(q, k2, v2, lengths)
    assert torch.equal(out, out2)
    assert torch.all(out[1, :, 13:] == 0) and torch.all(out[2] == 0)
    # a sequence of length 13 equals the same sequence cut to 13 tokens
    alone = pycsa.ops.attention(q[1:2, :, :13], k[1:2, :, :13], v[1:2, :, :13])
    assert torch.allclose(out[1:2, :, :13], alone, atol=1e-6)


def test_strided_views_of_a_fused_projection(device):
    """q, k, v as views of one (B, T, 3, H, D) projection: no copy needed, same result."""
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 70, 3, 4, 64, generator=g).to(device)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    assert not q.is_contiguous()
    out = pycsa.ops.attention(q, k, v)
    assert torch.allclose(out.double().cpu(), _expected(q, k, v), atol=ATOL[torch.float32])


def test_float64_and_numpy_inputs():
    q, k, v = _qkv(2, 2, 9, 8, torch.float64, "cpu")
    out = pycsa.ops.attention(q.numpy(), k.numpy(), v.numpy(), np.array([9, 4]))
    assert isinstance(out, np.ndarray)
    assert np.allclose(out, _expected(q, k, v, torch.tensor([9, 4])).numpy(), atol=1e-12)


def test_custom_scale(device):
    q, k, v = _qkv(1, 2, 33, 64, torch.float32, device)
    out = pycsa.ops.attention(q, k, v, scale=0.5)
    ref = reference.attention(q.double().cpu(), k.double().cpu(), v.double().cpu(), scale=0.5)
    assert torch.allclose(out.double().cpu(), ref, atol=ATOL[torch.float32])


def test_agrees_with_sdpa(device):
    q, k, v = _qkv(2, 3, 100, 64, torch.float32, device)
    lengths = torch.tensor([100, 31], device=device)
    assert torch.allclose(pycsa.ops.attention(q, k, v, lengths), sdpa_with_lengths(q, k, v, lengths), atol=1e-5)


@pytest.mark.parametrize("ragged", [False, True])
def test_gradients_match_reference(ragged, device):
    q, k, v = _qkv(2, 2, 23, 32, torch.float64, "cpu")
    lengths = torch.tensor([23, 9]) if ragged else None
    leaves = [t.float().to(device).requires_grad_() for t in (q, k, v)]
    out = pycsa.ops.attention(*leaves, None if lengths is None else lengths.to(device))
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, g)
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_out = reference.attention(*ref_leaves, lengths)
    ref_grads = torch.autograd.grad(ref_out, ref_leaves, g.double().cpu())
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got.double().cpu(), want, atol=1e-4)


def test_opcheck():
    q, k, v = _qkv(2, 2, 11, 16, torch.float32, "cpu")
    torch.library.opcheck(torch.ops.pycsa.attention.default, (q, k, v, torch.tensor([11, 5]), None))
    torch.library.opcheck(torch.ops.pycsa.attention.default, (q, k, v, None, 0.3))


def test_torch_compile_fullgraph():
    q, k, v = _qkv(2, 2, 11, 16, torch.float32, "cpu")
    fn = torch.compile(lambda a, b, c: torch.ops.pycsa.attention(a, b, c, None, None) * 2, backend="aot_eager",
                       fullgraph=True)
    assert torch.allclose(fn(q, k, v), 2 * pycsa.ops.attention(q, k, v))


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (lambda q, k, v, n: (q[0], k[0], v[0], n), ValueError, "q: expected a 4-D"),
        (lambda q, k, v, n: (q, k[:, :, :3], v, n), ValueError, "k: expected the shape"),
        (lambda q, k, v, n: (q, k, v.double(), n), TypeError, "v: dtype"),
        (lambda q, k, v, n: (q.int(), k.int(), v.int(), n), TypeError, "q: expected float32"),
        (lambda q, k, v, n: (q, k, v, n.float()), TypeError, "lengths: expected an integer"),
        (lambda q, k, v, n: (q, k, v, n[:1]), ValueError, "lengths: expected shape"),
        (lambda q, k, v, n: (q, k, v, n + 5), ValueError, r"lengths: must lie in \[0, 7\]"),
        (lambda q, k, v, n: (q, k, v, n - 5), ValueError, "lengths: must lie"),
    ],
)
def test_bad_input_names_the_argument(change, exc, match):
    q, k, v = _qkv(2, 2, 7, 8, torch.float32, "cpu")
    args = change(q, k, v, torch.tensor([7, 3]))
    with pytest.raises(exc, match=match):
        pycsa.ops.attention(*args)


def test_cpp_op_checks_too():
    q, k, v = _qkv(2, 2, 7, 8, torch.float32, "cpu")
    with pytest.raises(ValueError, match="lengths: must lie"):
        torch.ops.pycsa.attention(q, k, v, torch.tensor([8, 1]), None)
    with pytest.raises(TypeError, match="k: dtype"):
        torch.ops.pycsa.attention(q, k.half(), v, None, None)


def test_head_dim_zero_names_q():
    q = torch.zeros(1, 1, 3, 0)
    with pytest.raises(ValueError, match="q: head_dim"):
        pycsa.ops.attention(q, q, q)


def test_inputs_on_two_devices_name_the_argument():
    q, k, v = _qkv(1, 1, 3, 8, torch.float32, "cpu")
    with pytest.raises(ValueError, match="k: on meta"):
        pycsa.ops.attention(q, k.to("meta"), v)
    with pytest.raises(ValueError, match="lengths: on meta"):
        pycsa.ops.attention(q, k, v, torch.tensor([2], device="meta"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)  # the C++ op, the reference
def test_non_finite_padding_leaves_outputs_and_gradients_alone(dtype):
    q, k, v = _qkv(3, 2, 9, 8, dtype, "cpu")
    lengths = torch.tensor([9, 5, 0])
    weights = torch.randn(q.shape, generator=torch.Generator().manual_seed(7), dtype=dtype)

    def run(q, k, v):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = pycsa.ops.attention(*leaves, lengths)
        return out, torch.autograd.grad((out * weights).sum(), leaves)

    out, grads = run(q, k, v)
    dirty = [t.clone() for t in (q, k, v)]
    for t in dirty:
        t[1, :, 5:] = float("nan")
        t[2] = float("inf")
    dirty_out, dirty_grads = run(*dirty)
    assert torch.equal(dirty_out, out)
    for got, want in zip(dirty_grads, grads):
        assert torch.isfinite(got).all()
        assert torch.all(got[1, :, 5:] == 0) and torch.all(got[2] == 0)
        torch.testing.assert_close(got, want)


def test_sdpa_with_lengths_ignores_non_finite_padding():
    q, k, v = _qkv(2, 2, 9, 8, torch.float32, "cpu")
    lengths = torch.tensor([9, 4])
    dirty = [t.clone() for t in (q, k, v)]
    for t in dirty:
        t[1, :, 4:] = float("nan")
    assert torch.equal(sdpa_with_lengths(*dirty, lengths), sdpa_with_lengths(q, k, v, lengths))
