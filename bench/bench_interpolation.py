"""Step time of interpolate-and-tune with k experts vs one expert (and vs running k forwards).

    python bench/bench_interpolation.py [--steps 8] [--batch 16]

π-Tuning combines k LoRA experts as one rank-k·r adapter (see pitune_core.tune.interpolation), so a
training step should cost about one expert's step, not k. The naive reference runs k separately
adapted trunks and mixes their outputs (k forwards + backwards), as an output-space mixture would.
All timings are measured side by side in this one run, on the current device.
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
    for _ in range(2):
        step_fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ks", default="1,3,5")
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
        t_single = time_steps(step_for([single], [p for p in single.parameters() if p.requires_grad]), args.steps)
        rows = []
        for k in ks:
            interp = InterpolatedExperts(bb, dirs[:k])
            t_interp = time_steps(step_for([interp.trunk()], interp.trainable_parameters()), args.steps)
            models = [load_expert(d, bb, trainable=True)[0] for d in dirs[:k]]
            mix = torch.zeros(k, requires_grad=True, device=bb.device)
            params = [mix] + [p for m in models for p in m.parameters() if p.requires_grad]
            t_naive = time_steps(step_for(models, params, mix), args.steps)
            rows.append((k, t_interp, t_naive))
            del models
    print(f"device={bb.device} threads={torch.get_num_threads()} batch={args.batch} seq<=64 steps={args.steps}")
    print(f"single expert step: {t_single * 1000:.1f} ms")
    print(f"{'k':>3} {'interpolated ms':>16} {'ratio vs single':>16} {'naive k-forward ms':>19} {'naive ratio':>12}")
    for k, ti, tn in rows:
        print(f"{k:>3} {ti * 1000:16.1f} {ti / t_single:16.2f} {tn * 1000:19.1f} {tn / t_single:12.2f}")


if __name__ == "__main__":
    main()
