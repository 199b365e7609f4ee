"""bench/roofline.py: the FLOP count and the GEMM rate that the speed benches compare against."""

import math
import sys
from pathlib import Path

import pytest
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


def test_gemm_rate_is_flops_per_second_of_the_median_shape(monkeypatch):
    """On a clock that advances a known time per product, the rate is exactly 2·m·k·n·reps / elapsed,
    the median over SHAPES (a rate off by a factor, or taken over the warm-up, fails)."""
    clock = {"t": 0.0}
    per_mm = {}

    def fake_mm(a, b):  # each product "takes" a time proportional to its size: rate 1e9 FLOP/s
        clock["t"] += 2 * a.shape[0] * a.shape[1] * b.shape[1] / 1e9 * per_mm.get("scale", 1.0)
        return a

    monkeypatch.setattr(roofline.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(roofline.torch, "mm", fake_mm)
    assert roofline.gemm_rate(seconds=0.05) == pytest.approx(1e9, rel=1e-9)
    per_mm["scale"] = 4.0  # four times slower products: a quarter of the rate
    assert roofline.gemm_rate(seconds=0.05) == pytest.approx(2.5e8, rel=1e-9)


def test_gemm_rate_measures_this_machine():
    rate = roofline.gemm_rate(seconds=0.02)
    assert math.isfinite(rate) and 1e8 < rate < 1e14  # FLOP/s of any CPU this runs on
