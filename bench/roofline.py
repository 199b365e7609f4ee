"""How close a code path is to this machine's matrix-product speed (benchmark helper, not a benchmark).

Why: issue 15 asks for 2x training throughput and 5x Fisher on CPU. Both jobs are almost all matrix
products (the trunk's linear layers, forward and backward), so the fastest any implementation can go
is (matrix-product FLOPs the job must do) / (the GEMM rate this CPU reaches). ``count_flops`` counts a
call's FLOPs with torch's own :class:`torch.utils.flop_counter.FlopCounterMode` (matmul, addmm, bmm,
convolution and attention kernels it has formulas for); ``gemm_rate`` times ``torch.mm`` on the shapes
of this backbone's layers (MiniLM: hidden 384, intermediate 1536) with the current thread count.
The benches print the resulting bound next to the measured speed, so "the target is out of reach on
this machine" is a measured statement, not a guess.

``kernel_time`` is the second, tighter bound: it runs a call under torch's profiler and adds up the
time spent inside the matrix-product and attention kernels themselves (at the shapes the job really
has, which a square-matrix GEMM rate flatters). Removing *everything else* (indexing, GELU, layer
norm, the optimizer, Python) cannot make the call faster than that time.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

#: (rows, inner, cols) of the trunk's linear layers at a typical few-shot batch's token count
SHAPES = ((512, 384, 384), (512, 384, 1536), (512, 1536, 384), (2048, 384, 1536))


def gemm_rate(seconds: float = 0.4, dtype=torch.float32) -> float:
    """Median FLOP/s of ``torch.mm`` over :data:`SHAPES` on this machine now (current threads, CPU)."""
    rates = []
    for m, k, n in SHAPES:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        torch.mm(a, b)
        reps, t0 = 0, time.perf_counter()
        while (dt := time.perf_counter() - t0) < seconds:
            torch.mm(a, b)
            reps += 1
        rates.append(2 * m * k * n * reps / dt)
    return statistics.median(rates)


def count_flops(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), FLOPs it ran)`` as torch's FlopCounterMode counts them."""
    with FlopCounterMode(display=False) as counter:
        out = fn(*args, **kwargs)
    return out, counter.get_total_flops()


#: the kernels that do the trunk's arithmetic (matrix products and fused attention)
KERNELS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def kernel_time(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), seconds it spent inside matrix-product/attention kernels)``, measured
    under :mod:`torch.profiler` (CPU activity: meaningful for CPU runs only). The benches divide it
    by the wall time of an unprofiled run of the same call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = fn(*args, **kwargs)
    kern = sum(e.self_cpu_time_total for e in prof.key_averages()
               if e.key in KERNELS or e.key.startswith("aten::_scaled_dot_product")) / 1e6
    return out, kern
