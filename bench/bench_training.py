"""Training throughput before/after issue 15 (packed sequences), on the study's two job kinds.

    python bench/bench_training.py [--seeds 0 1 2] [--jobs transfer-text transfer-image compare-text compare-image]
                                   [--threads N] [--out bench_training.json]

Jobs (the real code paths, run on the shipped study's LoRA experts and its Fisher similarities):

- ``transfer-*``: one cell of the pairwise transfer study, :func:`pitune_core.study.transfer.few_shot_score`
  (8 shots, 25 steps, source expert as initialisation, 200 scored test examples), as the
  ``transfer-pair`` job runs it; text: amazon_sentiment -> rt_polarity, image: mnist -> sklearn_digits;
- ``compare-*``: one cell of the comparison, :func:`pitune_core.tune.baselines.run_method` ``pi-tuning``
  (16 shots, top-3 sources, interpolate-and-tune, full val and test evaluation) on rt_polarity
  (text) and opencv_digits (image).

"before" is today's code path as it was before issue 15: :func:`legacy_train_loop` and
:func:`legacy_predict` below are VERBATIM copies of ``train_loop``/``predict`` from before the change
(benchmark-only copies, labelled as such), and the backbone runs padded with transformers' own SDPA
(``backbone.packing = False``, attention implementation ``sdpa``), i.e. two padded trunk calls per
step (label texts, then the batch), tokenising every call, and a transfer pair scores its expert on
the validation split as well as the test split (it keeps only the test score). "after" is the code as it is.
Both run in this one process, alternating before/after per job and seed (the order flips with
the seed), so machine load hits both sides alike.

Then a roofline pass (``bench/roofline.py``, skip with ``--no-roofline``): each job once more per code
path under torch's FlopCounterMode, the matrix-product FLOPs per training step, and this CPU's
``torch.mm`` rate: ``bound`` = the steps/s no implementation of the same products can beat, and the
best possible before/after ratio (the issue asks for 2x). Then a kernel-time pass: the after-path once
more under torch.profiler, the seconds per step spent inside the matrix-product and attention kernels at
the job's real shapes (``roofline.kernel_time``), hence the best ratio any removal of everything else
could reach.

Reported per job: training steps/s inside ``train_loop`` (median over seeds), training steps per
CPU-second of this process (less sensitive to other load on a shared machine), whole-job steps/s
(steps / job wall time, including loading, evaluation and everything else the job does), their
before/after ratios, and the job's test score before and after (mean ± std over seeds, ddof=1):
the same expert trained both ways must score the same within seed noise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PITUNE_QUIET", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn.functional as F

from pitune_core.data.tasks import get_task
from pitune_core.model import experts
from pitune_core.model.backbone import UnifiedBackbone
from pitune_core.model.device import seed_everything
from pitune_core.model.experts import TaskTensors, TrainConfig
from pitune_core.paths import REPO_ROOT, StudyPaths
from pitune_core.tune import baselines

sys.path.insert(0, str(Path(__file__).resolve().parent))
import roofline  # noqa: E402  (bench/roofline.py)

STUDY = REPO_ROOT / "precomputed"
JOBS = {
    "transfer-text": ("transfer", "rt_polarity", "amazon_sentiment"),
    "transfer-image": ("transfer", "sklearn_digits", "mnist"),
    "compare-text": ("compare", "rt_polarity", None),
    "compare-image": ("compare", "opencv_digits", None),
}


# ----------------------------------------------------------------------------- the code before issue 15
# Benchmark-only verbatim copies (pitune_core/model/experts.py before the change); not used elsewhere.

def legacy_train_loop(backbone, model, train: TaskTensors, verbalizers, params, lr, cfg: TrainConfig,
                      on_step=None, extra_loss=None, label_texts_fn=None) -> list[float]:
    if len(train) == 0:
        raise ValueError("cannot train on an empty data set")
    g = seed_everything(cfg.seed)
    steps = cfg.steps_for(len(train))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)))
    losses: list[float] = []
    order = torch.randperm(len(train), generator=g)
    pos = 0
    for step in range(steps):
        if pos + cfg.batch_size > len(order):
            order, pos = torch.randperm(len(train), generator=g), 0
        idx = order[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        inputs, labels = train.batch(idx)
        label_emb = backbone.encode_texts(verbalizers, model)
        logits = backbone.logits(inputs, label_emb, model)
        loss = F.cross_entropy(logits, labels.to(logits.device))
        if extra_loss is not None:
            loss = loss + extra_loss()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {step}: loss is {loss.item()}; "
                                     f"lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.item()))
        if on_step is not None:
            on_step({"stage": "train", "step": step + 1, "total": steps, "loss": losses[-1]})
    return losses


@torch.no_grad()
def legacy_predict(backbone, model, data: TaskTensors, verbalizers, batch_size: int = 64) -> np.ndarray:
    trunk = model if model is not None else backbone.base_trunk()
    label_emb = backbone.encode_texts(verbalizers, trunk)
    preds = []
    for i in range(0, len(data), batch_size):
        inputs, _ = data.batch(range(i, min(i + batch_size, len(data))))
        preds.append(backbone.logits(inputs, label_emb, trunk).argmax(-1).cpu())
    return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)


# ----------------------------------------------------------------------------- switching and timing

class Clock:
    def __init__(self, count_flops: bool = False, profile: bool = False):
        self.train_s = 0.0
        self.train_cpu_s = 0.0
        self.steps = 0
        self.count = count_flops  # count the loop's FLOPs instead of trusting its time (roofline pass)
        self.flops = 0
        self.profile = profile  # time the loop's matrix/attention kernels under the profiler
        self.kernel_s = 0.0

    def wrap(self, loop):
        def timed(*args, **kwargs):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            if self.count:
                losses, flops = roofline.count_flops(loop, *args, **kwargs)
                self.flops += flops
            elif self.profile:
                losses, kern = roofline.kernel_time(loop, *args, **kwargs)
                self.kernel_s += kern
            else:
                losses = loop(*args, **kwargs)
            sync()
            self.train_s += time.perf_counter() - t0
            self.train_cpu_s += time.process_time() - c0
            self.steps += len(losses)
            return losses
        return timed


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextlib.contextmanager
def code_path(bb: UnifiedBackbone, which: str, clock: Clock):
    """Route the real jobs through the before- or after-code (and time their train_loop calls)."""
    from pitune_core.study import transfer

    saved = (experts.train_loop, baselines.train_loop, experts.predict, bb.packing,
             bb.trunk.config._attn_implementation, transfer.train_expert)
    loop = legacy_train_loop if which == "before" else saved[0]
    experts.train_loop = baselines.train_loop = clock.wrap(loop)
    if which == "before":
        experts.predict = legacy_predict
        bb.packing = False
        bb.trunk.config._attn_implementation = "sdpa"  # copied into every fresh trunk
        # a transfer pair scored its expert on val too before issue 15 (unused: the pair keeps test)
        transfer.train_expert = lambda *a, **k: saved[5](*a, **{**k, "evaluate_val": True})
    try:
        yield
    finally:
        experts.train_loop, baselines.train_loop, experts.predict, bb.packing = saved[:4]
        bb.trunk.config._attn_implementation = saved[4]
        transfer.train_expert = saved[5]


def run_job(name: str, bb: UnifiedBackbone, sources, seed: int) -> float:
    kind, target, source = JOBS[name]
    if kind == "transfer":
        from pitune_core.study.transfer import TransferBudget, few_shot_score

        budget = TransferBudget(shots=8, steps=25, eval_limit=200)  # the shipped study's transfer budget
        src = StudyPaths(STUDY).experts_of("lora") / source
        return few_shot_score(target, "lora", bb, budget, seed, init_from=src)
    r = baselines.run_method("pi-tuning", target, sources, bb, "lora", k=3, shots=16, seed=seed)
    return float(r["score"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--out", default=None, help="write the raw measurements as JSON here")
    ap.add_argument("--no-roofline", dest="roofline", action="store_false",
                    help="skip the roofline pass (FLOPs per step vs this CPU's matrix-product rate)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from pitune_core.study.sources import load_sources

    bb = UnifiedBackbone.load(StudyPaths(STUDY).backbone)
    sources = load_sources(STUDY, "lora", "fisher")
    for name in args.jobs:  # data and image features into the cache before any timing
        experts.prepare_task(get_task(JOBS[name][1]), bb)
    print(f"device {bb.device}, threads {torch.get_num_threads()}, seeds {args.seeds}, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}", flush=True)
    rows = []
    for seed in args.seeds:
        for name in args.jobs:
            order = ("before", "after") if seed % 2 == 0 else ("after", "before")
            for which in order:
                clock = Clock()
                t0, c0 = time.perf_counter(), time.process_time()
                with code_path(bb, which, clock):
                    score = run_job(name, bb, sources, seed)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                rows.append({"job": name, "seed": seed, "path": which, "score": score, "steps": clock.steps,
                             "train_s": clock.train_s, "job_s": wall, "train_cpu_s": clock.train_cpu_s,
                             "job_cpu_s": cpu})
                print(f"  {name:15s} seed {seed} {which:6s}: {clock.steps} steps, train {clock.train_s:6.1f} s "
                      f"({clock.steps / clock.train_s:5.2f} steps/s; CPU {clock.train_cpu_s:6.1f} s), "
                      f"job {wall:6.1f} s (CPU {cpu:6.1f} s), score {score:.4f}", flush=True)
    print()
    print(f"{'job':15s} {'train steps/s before':>20s} {'after':>7s} {'ratio':>6s} | {'job steps/s before':>18s} "
          f"{'after':>7s} {'ratio':>6s} | {'steps/CPU-s ratio':>17s} | score before (mean ± std) | after")
    summary = {}
    for name in args.jobs:
        def col(which, f):
            return [f(r) for r in rows if r["job"] == name and r["path"] == which]

        tb = statistics.median(col("before", lambda r: r["steps"] / r["train_s"]))
        ta = statistics.median(col("after", lambda r: r["steps"] / r["train_s"]))
        jb = statistics.median(col("before", lambda r: r["steps"] / r["job_s"]))
        ja = statistics.median(col("after", lambda r: r["steps"] / r["job_s"]))
        sb, sa = col("before", lambda r: r["score"]), col("after", lambda r: r["score"])
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else float("nan"))
        cb = statistics.median(col("before", lambda r: r["steps"] / r["train_cpu_s"]))
        ca = statistics.median(col("after", lambda r: r["steps"] / r["train_cpu_s"]))
        summary[name] = {"train_steps_per_s": [tb, ta, ta / tb], "job_steps_per_s": [jb, ja, ja / jb],
                         "train_steps_per_cpu_s": [cb, ca, ca / cb],
                         "score_before": [statistics.mean(sb), sd(sb)], "score_after": [statistics.mean(sa), sd(sa)]}
        print(f"{name:15s} {tb:20.2f} {ta:7.2f} {ta / tb:5.2f}x | {jb:18.2f} {ja:7.2f} {ja / jb:5.2f}x | "
              f"{ca / cb:16.2f}x | "
              f"{statistics.mean(sb):.4f} ± {sd(sb):.4f}        | {statistics.mean(sa):.4f} ± {sd(sa):.4f}")
    if args.roofline and bb.device.type == "cpu":
        rate = roofline.gemm_rate()
        print(f"\nroofline: torch.mm on this CPU at {torch.get_num_threads()} threads: {rate / 1e9:.1f} GFLOP/s "
              f"(median over the trunk's layer shapes). Matrix-product FLOPs per training step (FlopCounterMode, "
              f"seed {args.seeds[0]}; attention kernels are not counted, so the bound is generous):")
        print(f"{'job':15s} {'GFLOP/step before':>17s} {'after':>7s} | {'bound steps/s':>13s} "
              f"{'measured after':>14s} {'= % of bound':>12s} | {'best possible ratio':>19s}")
        for name in args.jobs:
            per = {}
            for which in ("before", "after"):
                clock = Clock(count_flops=True)
                with code_path(bb, which, clock):
                    run_job(name, bb, sources, args.seeds[0])
                per[which] = clock.flops / max(1, clock.steps)
            bound = rate / per["after"]
            tb, ta = summary[name]["train_steps_per_s"][:2]
            summary[name]["roofline"] = {"gemm_flops_per_s": rate, "flops_per_step_before": per["before"],
                                         "flops_per_step_after": per["after"], "bound_steps_per_s": bound,
                                         "best_possible_ratio": bound / tb}
            print(f"{name:15s} {per['before'] / 1e9:17.2f} {per['after'] / 1e9:7.2f} | {bound:13.2f} "
                  f"{ta:14.2f} {100 * ta / bound:11.0f}% | {bound / tb:18.2f}x")
        print("\nkernel time (torch.profiler, seed {}): seconds per training step inside the matrix-product and "
              "attention kernels at the job's real shapes, after; if everything else took no time at all, the "
              "step could not be faster than that:".format(args.seeds[0]))
        print(f"{'job':15s} {'kernel s/step':>13s} {'measured s/step':>15s} {'kernel share':>12s} | "
              f"{'best possible ratio':>19s}")
        for name in args.jobs:
            clock = Clock(profile=True)
            with code_path(bb, "after", clock):
                run_job(name, bb, sources, args.seeds[0])
            k = clock.kernel_s / max(1, clock.steps)
            tb, ta = summary[name]["train_steps_per_s"][:2]
            summary[name]["kernel_time"] = {"kernel_s_per_step": k, "kernel_share": k * ta,
                                            "best_possible_ratio": 1 / (k * tb)}
            print(f"{name:15s} {k:13.3f} {1 / ta:15.3f} {100 * k * ta:11.0f}% | {1 / (k * tb):18.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": str(bb.device), "threads": torch.get_num_threads(),
                                              "rows": rows, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
