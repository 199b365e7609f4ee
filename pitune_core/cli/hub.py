"""``pitune hub synth``: a synthetic adapter hub (thousands of tasks) to try pitune at hub scale.

The hub is made from the real LoRA Fisher embeddings of the shipped study, perturbed and mixed
(seeded; see :mod:`pitune_core.study.hub`), and written as a study directory that ``pitune verify
DIR --no-load`` accepts and ``pitune dashboard --study DIR`` opens. Its tasks have no trained
experts: the hub is for the predict half (top-k, task graph, map) and for measuring it.
"""

from __future__ import annotations

import time
from pathlib import Path


def cmd_synth(args) -> int:
    from pitune_core.study.hub import HubConfig, write_hub_study  # lazy: loads numpy

    cfg = HubConfig(n=args.n, seed=args.seed, noise=args.noise, mix=args.mix, group_scale=args.group_scale,
                    k=args.k, dense_max=args.dense_max)
    t0 = time.perf_counter()
    man = write_hub_study(Path(args.out), cfg, real=args.embeddings, method=args.method,
                          say=lambda m: print(f"[{time.perf_counter() - t0:7.1f}s] {m}", flush=True))
    info = man["hub"]["neighbours_info"]
    print(f"wrote a {cfg.n}-task hub to {args.out} ({len(man['files'])} files; top-{cfg.k} neighbours by "
          f"{man['hub']['method']} search in {info.get('seconds', {}).get('total', info.get('seconds', {}).get('exact', 0)):.1f} s"
          f"{'' if cfg.n <= cfg.dense_max else '; no full similarity matrix above --dense-max'}). "
          f"Open it with `pitune dashboard --study {args.out}`")
    return 0


def register(sub, add) -> None:
    from pitune_core.study.hub import REAL_FISHER, HubConfig  # lazy: loads numpy

    d = HubConfig()
    sp = add("hub", None, "synthetic adapter hubs (thousands of tasks) for trying pitune at scale")
    hs = sp.add_subparsers(dest="hub_command", required=True, metavar="HUB_COMMAND")
    p = hs.add_parser("synth", help="generate a hub study from the real Fisher embeddings (perturbed, mixed, seeded)",
                      description=__doc__.splitlines()[0])
    p.set_defaults(func=cmd_synth)
    p.add_argument("--n", type=int, default=d.n, help=f"number of tasks (default {d.n}; the first 24 are the real ones)")
    p.add_argument("--out", required=True, help="new (or empty) directory for the hub study")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--k", type=int, default=d.k, help=f"neighbours stored per task (default {d.k})")
    p.add_argument("--noise", type=float, default=d.noise, help=f"std of the per-element log-normal noise (default {d.noise})")
    p.add_argument("--mix", type=float, default=d.mix, help=f"largest weight of the second task in a mix (default {d.mix})")
    p.add_argument("--group-scale", type=float, default=d.group_scale,
                   help=f"std of each group's random log-scale (the measure ignores it; default {d.group_scale})")
    p.add_argument("--dense-max", type=int, default=d.dense_max,
                   help=f"also write the full similarity matrix up to this many tasks (default {d.dense_max})")
    p.add_argument("--method", choices=("auto", "exact", "approx"), default="auto",
                   help="top-k search: exact matrix or candidate search (default auto: exact up to 500 tasks)")
    p.add_argument("--embeddings", default=str(REAL_FISHER), help="the real Fisher embeddings to start from")
