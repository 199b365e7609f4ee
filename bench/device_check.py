"""GPU-path check and timings: the same pitune code on CPU and on CUDA, side by side.

    python bench/device_check.py [--steps 40]

Trains LoRA / prompt-tuning / IA3 experts for a fixed number of steps on a text task and a vision
task, then an interpolated (k=3) run, on every available device, and prints seconds per step and
the speed-up. Where the weight packages cannot be installed (the lent GPU machine has no network),
run it with PITUNE_TRUNK_PATH (a folder with MiniLM's config + tokenizer) and PITUNE_RANDOM_WEIGHTS=1:
timings and the device path are then real, the accuracies are not and are not printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PITUNE_QUIET", "1")

import torch

from pitune_core.model.backbone import UnifiedBackbone, random_weights
from pitune_core.model.experts import TrainConfig, train_expert
from pitune_core.tune.interpolation import InterpolatedExperts
from pitune_core.model.experts import prepare_task, train_loop
from pitune_core.data.tasks import get_task


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--text-task", default="movie_sentiment")
    ap.add_argument("--image-task", default="textures")
    args = ap.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if torch.cuda.is_available():
        print(f"cuda: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print(f"cpu threads: {torch.get_num_threads()}; random weights: {random_weights()}")
    cfg = TrainConfig(min_steps=args.steps, max_steps=args.steps)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dev in devices:
            bb = UnifiedBackbone.load(device=torch.device(dev))
            for task, method in [(args.text_task, "lora"), (args.text_task, "prompt"), (args.text_task, "ia3"),
                                 (args.image_task, "lora")]:
                res = train_expert(task, method, bb, seed=0, train_config=cfg, evaluate_zero_shot=False,
                                   out=Path(tmp) / dev / f"{task}-{method}")
                results[(dev, task, method)] = res.meta["train_time_s"] / args.steps
                acc = "" if random_weights() else f" test acc {res.meta['metrics']['test']['accuracy']:.3f}"
                print(f"[{dev}] {method:6s} on {task:16s}: {1000 * results[(dev, task, method)]:7.1f} ms/step{acc}",
                      flush=True)
            # an interpolated run with three LoRA sources (the text expert three times, different seeds)
            srcs = []
            for s in range(3):
                srcs.append(train_expert(args.text_task, "lora", bb, seed=s, out=Path(tmp) / dev / f"src{s}",
                                         train_config=TrainConfig(min_steps=2, max_steps=2),
                                         evaluate_zero_shot=False).path)
            interp = InterpolatedExperts(bb, srcs)
            spec = get_task(args.text_task)
            _, tensors = prepare_task(spec, bb)
            t0 = time.time()
            train_loop(bb, interp.trunk(), tensors["train"], list(spec.verbalizers), interp.trainable_parameters(),
                       1e-3, cfg)
            if dev == "cuda":
                torch.cuda.synchronize()
            results[(dev, "interp", "k3")] = (time.time() - t0) / args.steps
            print(f"[{dev}] pi-tuning k=3 on {args.text_task}: {1000 * results[(dev, 'interp', 'k3')]:7.1f} ms/step",
                  flush=True)
            if dev == "cuda":
                print(f"[cuda] peak memory allocated: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    if "cuda" in devices:
        print("\nspeed-up cuda vs cpu (same code, same run):")
        for (dev, task, method), t in results.items():
            if dev == "cuda":
                print(f"  {method:6s} {task:16s} {results[('cpu', task, method)] / t:6.1f}x")


if __name__ == "__main__":
    main()
