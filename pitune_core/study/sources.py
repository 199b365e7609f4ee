"""The experts of a study that a run may draw on, with their predicted similarities."""

from __future__ import annotations

import json
from pathlib import Path

from pitune_core.paths import StudyPaths
from pitune_core.spec.vocab import EXPERT_META_FILE
from pitune_core.study.read.placed import merge_similarity  # user tasks placed on this study can be targets
from pitune_core.tune.interpolation import InterpolationError
from pitune_core.common import admission
from pitune_core.model.experts import ExpertError, read_expert_meta
from pitune_core.predict.similarity import read_similarity_csv
from pitune_core.tune.baselines import Sources


def load_sources(study: str | Path, method: str, embedding: str = "fisher"):
    """The study's experts of one method and the predicted similarities between them."""
    study = Path(study)
    root = StudyPaths(study).experts_of(method)
    if not root.is_dir():
        raise InterpolationError(f"study {study} has no {method} experts (expected {root}); "
                                 f"run `pitune precompute` or train experts first")
    metas: dict[str, dict] = {}
    dirs, gated = admitted_experts({p.name: p for p in sorted(root.iterdir()) if (p / EXPERT_META_FILE).exists()},
                                   metas)
    sim_path = StudyPaths(study).similarity_csv(method, embedding)
    if not sim_path.exists():
        raise InterpolationError(f"no {embedding} similarities for {method} experts in {study} ({sim_path} missing)")
    names, S = read_similarity_csv(sim_path)
    names, S = merge_similarity(study, method, embedding, names, S)
    return Sources(dirs, names, S, gated=gated, method_config=library_config({n: metas[n] for n in dirs}))


def library_config(metas: dict[str, dict]) -> dict | None:
    """The adapter configuration the library's experts share (``method_config`` minus name and lr), or
    None for an empty library; a library whose experts disagree is refused in one line."""
    configs: dict[str, list[str]] = {}
    for name, meta in metas.items():
        mc = {k: v for k, v in meta["method_config"].items() if k not in ("name", "lr")}
        configs.setdefault(json.dumps(mc, sort_keys=True), []).append(name)
    if len(configs) > 1:
        raise InterpolationError("the study's experts have different adapter configurations ("
                                 + "; ".join(f"{', '.join(v[:3])}: {k}" for k, v in configs.items())[:400]
                                 + "); one library needs one")
    if not configs:
        return None
    cfg = json.loads(next(iter(configs)))
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def admitted_experts(dirs: dict[str, Path], metas: dict | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Split a library into the experts offered as sources ``{task: dir}`` and the gated ones
    ``{task: reason}`` (:func:`pitune_core.common.admission`; an unreadable expert is gated with
    its one-line error). Every path that picks sources goes through here. ``metas``, when given,
    receives each readable expert's metadata."""
    admitted, gated = {}, {}
    for name, d in dirs.items():
        try:
            meta = read_expert_meta(d)
            if metas is not None:
                metas[name] = meta
            ok, why = admission(meta)
        except ExpertError as e:
            ok, why = False, f"not offered as a source: {e}"
        if ok:
            admitted[name] = str(d)
        else:
            gated[name] = why
    return admitted, gated
