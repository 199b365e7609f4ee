"""bench/roofline.py: the FLOP count and the GEMM rate that the speed benches compare against."""

import sys
from pathlib import Path

import torch
from torch.func import grad, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import roofline  # noqa: E402


def test_count_flops_is_torch_counters_total():
    a, b = torch.randn(30, 20), torch.randn(20, 10)
    out, flops = roofline.count_flops(torch.mm, a, b)
    assert flops == 2 * 30 * 20 * 10
    torch.testing.assert_close(out, a @ b)


def test_count_flops_sees_through_vmap_and_grad():
    """The batched Fisher is vmap(grad(...)): its products must be counted, not hidden by the transform."""
    w, x = torch.randn(16, 16), torch.randn(5, 4, 16)
    _, flops = roofline.count_flops(lambda: vmap(grad(lambda w, x: (x @ w).sum()), in_dims=(None, 0))(w, x))
    assert flops == 2 * (5 * 2 * 4 * 16 * 16)  # forward and the weight gradient, per example


def test_gemm_rate_is_a_positive_rate():
    rate = roofline.gemm_rate(seconds=0.02)
    assert 1e8 < rate < 1e14  # FLOP/s of any CPU this runs on
