"""Benchmark: an imported library (issue 31) -- import + embeddings + graph, top-k, one π-Tuning run.

Run as ``python bench/bench_library.py [--n 20] [--r 8] [--shots 16] [--target rt_polarity]``. It first
produces ``--n`` LoRA adapters on the packaged MiniLM with plain transformers + peft
(``tests/plain_peft.py``, a few steps each, on the suite's text tasks and several seeds; not timed),
then times, each as the command line runs it (in this process):

- ``pitune library import DIR --name bench``: every check, the pitune experts written, both
  weight-based similarities, the kNN graph, communities and map, the rename into place;
- ``pitune top-k TARGET --library bench --shots S``: the target's own expert + the ranking;
- ``pitune transfer TARGET --library bench --shots S``: one π-Tuning run (k = 3 + the own expert).

The load average is printed: the timings are of this machine's CPUs, which other processes share.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

TEXT_TASKS = ("movie_sentiment", "amazon_sentiment", "tweet_sentiment", "nyt_sentiment", "newsgroups_topic",
              "newsgroups_science", "bbc_topic", "election_tweets", "rt_subjectivity", "friends_speaker",
              "number_words")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--target", default="rt_polarity")
    ap.add_argument("--steps", type=int, default=6, help="training steps per produced adapter")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import plain_peft

    from pitune_core.cli.main import main as pitune
    from pitune_core.data.tasks import get_task
    from pitune_core.model.backbone import trunk_path

    work = Path(tempfile.mkdtemp(prefix="bench-library-"))
    os.environ["PITUNE_LIBRARIES"] = str(work / "libraries")
    src = work / "adapters"
    t0 = time.time()
    for i in range(args.n):
        task = TEXT_TASKS[i % len(TEXT_TASKS)]
        seed = i // len(TEXT_TASKS)
        spec = get_task(task)
        data = spec.load()
        idx = data.few_shot(4, seed=seed)
        plain_peft.train_adapter(trunk_path(), [data.train.texts[j] for j in idx], [int(data.train.labels[j]) for j in idx],
                                 list(spec.verbalizers), str(src / f"{task}-seed{seed}"), r=args.r, alpha=2 * args.r,
                                 steps=args.steps, seed=seed)
    print(f"produced {args.n} rank-{args.r} adapters with plain peft in {time.time() - t0:.1f} s (not timed below)")
    times = {}
    for name, argv in (("import + embeddings + graph", ["library", "import", str(src), "--name", "bench"]),
                       (f"top-k ({args.shots} shots)", ["top-k", args.target, "--library", "bench", "--shots",
                                                        str(args.shots)]),
                       (f"transfer ({args.shots} shots, k=3)", ["transfer", args.target, "--library", "bench",
                                                                "--shots", str(args.shots), "--out",
                                                                str(work / "run")])):
        t0 = time.time()
        assert pitune(argv) == 0, name
        times[name] = time.time() - t0
    print(f"\nload average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for name, s in times.items():
        print(f"{name:36s} {s:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
