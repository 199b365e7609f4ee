"""Step time of interpolate-and-tune with k experts vs one expert (and vs running k forwards).

    python bench/bench_interpolation.py [--steps 8] [--batch 16] [--rounds 3] [--target 1.15]

π-Tuning combines k LoRA experts as one rank-k·r adapter (see pitune_core.tune.interpolation), so a
training step should cost about one expert's step, not k. The naive reference runs k separately
adapted trunks and mixes their outputs (k forwards + backwards), as an output-space mixture would.
All timings are measured side by side in this one run, on the current device, in interleaved rounds;
on CPU they are the process's CPU time per step (robust to other load on a shared machine).
The recipe's target: k = 5 with per-layer (per adapter position) softmax weights costs at most
1.15x a single expert's step (exit status 1 when it does not).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PITUNE_QUIET", "1")

import numpy as np
import torch
import torch.nn.functional as F

from pitune_core.model.backbone import UnifiedBackbone
from pitune_core.model.experts import EXPERT_FORMAT, LoraMethod, attach, load_expert, prepare_task, save_expert
from pitune_core.tune.interpolation import InterpolatedExperts
from pitune_core.data.tasks import get_task


def make_experts(bb, n, root):
    dirs = []
    for i in range(n):
        torch.manual_seed(i)
        m = attach(bb.fresh_trunk(), LoraMethod())
        with torch.no_grad():
            for name, p in m.named_parameters():
                if p.requires_grad:
                    p.normal_(0, 0.02)
        meta = {"format": EXPERT_FORMAT, "task": "movie_sentiment", "modality": "language", "method": "lora",
                "method_config": asdict(LoraMethod()), "seed": i, "backbone_id": bb.backbone_id, "metrics": {}}
        dirs.append(save_expert(m, Path(root) / f"e{i}", meta))
    return dirs


def time_steps(step_fn, steps):
    """Seconds per step: CPU time of this process (all its threads) on CPU, wall-clock on CUDA.

    CPU time is what a step costs; wall-clock on a shared machine mostly measures the other load."""
    for _ in range(2):
        step_fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    clock = time.perf_counter if torch.cuda.is_available() else time.process_time
    t0 = clock()
    for _ in range(steps):
        step_fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (clock() - t0) / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ks", default="1,3,5")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--target", type=float, default=1.15, help="the k=5 per-layer ratio the recipe must stay under")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    bb = UnifiedBackbone.load()
    spec = get_task("movie_sentiment")
    _, tensors = prepare_task(spec, bb)
    inputs, y = tensors["train"].batch(range(args.batch))
    y = y.to(bb.device)
    verbal = list(spec.verbalizers)

    def step_for(trunks, params, mix=None):
        opt = torch.optim.AdamW(params, lr=1e-4)

        def step():
            if mix is None:
                labels = bb.encode_texts(verbal, trunks[0])
                logits = bb.logits(inputs, labels, trunks[0])
            else:  # naive: k forwards, outputs mixed by softmax weights
                w = torch.softmax(mix, 0)
                logits = sum(wi * bb.logits(inputs, bb.encode_texts(verbal, t), t) for wi, t in zip(w, trunks))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return step

    with tempfile.TemporaryDirectory() as tmp:
        dirs = make_experts(bb, max(ks), tmp)
        single, _ = load_expert(dirs[0], bb, trainable=True)
        single_step = step_for([single], [p for p in single.parameters() if p.requires_grad])
        steps = {}
        for k in ks:
            for gran in ("position", "global"):  # the paper's per-layer/position weights, and one vector
                interp = InterpolatedExperts(bb, dirs[:k], granularity=gran)
                steps[(k, gran)] = step_for([interp.trunk()], interp.trainable_parameters())
        # rounds interleave every configuration with the single expert, so machine load hits all alike;
        # each ratio is the median over rounds of (configuration / single expert in the same round)
        ratios = {key: [] for key in steps}
        t_single_all, t_all = [], {key: [] for key in steps}
        for _ in range(args.rounds):
            for key, fn in steps.items():
                ts = time_steps(single_step, args.steps)
                ti = time_steps(fn, args.steps)
                t_single_all.append(ts)
                t_all[key].append(ti)
                ratios[key].append(ti / ts)
        naive = {}
        for k in ks:
            models = [load_expert(d, bb, trainable=True)[0] for d in dirs[:k]]
            mix = torch.zeros(k, requires_grad=True, device=bb.device)
            params = [mix] + [p for m in models for p in m.parameters() if p.requires_grad]
            tn = time_steps(step_for(models, params, mix), args.steps)
            naive[k] = tn / time_steps(single_step, args.steps)
            del models
    med = lambda v: float(np.median(v))  # noqa: E731
    print(f"device={bb.device} threads={torch.get_num_threads()} batch={args.batch} seq<=64 steps={args.steps} "
          f"rounds={args.rounds}")
    print(f"single expert step: {med(t_single_all) * 1000:.1f} ms (median; {'wall' if torch.cuda.is_available() else 'CPU'} time)")
    print(f"{'k':>3} {'weights':>9} {'step ms':>8} {'ratio vs single':>16} {'naive k-forward ratio':>22}")
    for (k, gran), r in ratios.items():
        print(f"{k:>3} {gran:>9} {med(t_all[(k, gran)]) * 1000:8.1f} {med(r):16.2f} {naive[k]:22.2f}")
    if (5, "position") in ratios:
        r5 = med(ratios[(5, "position")])
        verdict = "PASS" if r5 <= args.target else "FAIL"
        print(f"target: k=5 with per-layer weights <= {args.target:.2f}x a single expert's step: {r5:.2f}x {verdict}")
        return 0 if r5 <= args.target else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
