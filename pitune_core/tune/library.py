"""π-Tuning over an imported library (``pitune top-k|transfer TARGET --library LIB``).

Nothing here is a second π-Tuning: the library's adapters are ordinary pitune experts
(:mod:`pitune_core.model.library`), so a run is :func:`pitune_core.tune.run.run_transfer` with the
library as its :class:`~pitune_core.tune.baselines.Sources` and a backbone on the library's base. What
differs is the ranking: a library ships no Fisher embeddings (it has no data), so the target's own
expert, trained on the run's shots with the library's adapter configuration, is compared with the
adapters by their weights (:func:`pitune_core.predict.library.rank_for`) -- the protocol's rule that a
ranking sees the run's data only holds unchanged.

Every entry point first checks that the base folder is still the one the library was imported on,
and runs with the backbone's trunk set to it (:func:`pitune_core.model.library.using_base`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from pitune_core.model.library import Library, open_library, using_base
from pitune_core.predict.library import DEFAULT_EMBEDDING, LIBRARY_EMBEDDINGS, factors_of_model, rank_for
from pitune_core.common import admission
from pitune_core.predict.similarity import read_similarity_csv


def library_backbone(lib: Library, device=None):
    """A backbone whose trunk is the library's base (call inside :func:`using_base`). Its projector is
    untrained: a library is text-only (imported adapters adapt the trunk's layers alone)."""
    from pitune_core.model.backbone import UnifiedBackbone  # lazy: loads torch

    return UnifiedBackbone(device=device, backbone_id=lib.base.backbone_id)


def resolve_embedding(lib: Library, requested: str | None) -> str:
    """The embedding that ranks a library's adapters: ``fisher`` (the default of ``top-k`` / ``transfer``)
    where the import measured it from a sample per adapter (``--samples``), else the library's default
    weight-based one; ``weights`` / ``arrow`` as asked."""
    if requested in (None, "fisher"):
        return "fisher" if lib.paths.embeddings_file("lora", "fisher").is_file() else DEFAULT_EMBEDDING
    if requested not in LIBRARY_EMBEDDINGS:
        raise ValueError(f"--embedding {requested} is not available for a library; choose fisher (with --samples at "
                         f"import), {' or '.join(LIBRARY_EMBEDDINGS)}")
    return requested


def library_sources(lib: Library, target: str | None = None, embedding: str = DEFAULT_EMBEDDING):
    """The library as a run's sources: its adapters that pass the quality gate where a sample measured
    them (:func:`pitune_core.common.admission`; unmeasured ones are offered), the stored similarities
    between them, its adapter configuration, and how a target's own expert is compared with them: by the
    adapters' Fisher embeddings (``embedding="fisher"``, the study's path) or their weights (a ranker).
    ``target`` gets a neutral row (every similarity 0) so that a run's config validates before its own
    expert ranks the adapters."""
    from pitune_core.model.experts import read_expert_meta  # lazy: loads torch
    from pitune_core.predict.embeddings import load_embeddings  # lazy: loads torch
    from pitune_core.tune.baselines import Sources  # lazy: loads torch

    names, S = read_similarity_csv(lib.paths.similarity_csv("lora", embedding))
    if target is not None and target not in names:
        names = [*names, target]
        S = np.pad(S, ((0, 1), (0, 1)))
        S[-1, -1] = 1.0
    dirs, gated = {}, {}
    for n, d in lib.expert_dirs().items():
        if n == target:
            continue
        with using_base(lib.base):  # the expert checks are made against the library's base
            meta = read_expert_meta(d)
        ok, why = admission(meta) if meta.get("metrics") else (True, "")
        if ok:
            dirs[n] = d
        else:
            gated[n] = why
    if embedding == "fisher":
        return Sources(dirs, names, S, embeddings=load_embeddings(lib.paths.embeddings_file("lora", "fisher")),
                       gated=gated, method_config=lib.method_overrides())
    return Sources(dirs, names, S, gated=gated, method_config=lib.method_overrides(),
                   ranker=lambda model: [(n, s) for n, s in rank_for(factors_of_model(model), lib, embedding)
                                         if n in dirs])


def rank_target(target: str, lib: Library, shots: int | None, seed: int = 0, embedding: str = DEFAULT_EMBEDDING,
                on_step: Callable[[dict], None] | None = None, backbone=None) -> list[tuple[str, float]]:
    """``pitune top-k TARGET --library LIB``: the target's own expert, trained on ``shots`` per class with
    the steps a transfer run gives it, compared with every adapter of the library (best first)."""
    from pitune_core.tune.baselines import Recipe, budget_for, run_data, split_budget, target_side  # lazy: loads torch

    with using_base(lib.base):
        bb = backbone or library_backbone(lib)
        _, _, train_t = run_data(target, bb, shots, seed)
        own_steps, _ = split_budget(budget_for(shots, seed).steps_for(len(train_t)), Recipe())
        with tempfile.TemporaryDirectory(prefix="pitune-topk-") as tmp:
            side = target_side(target, library_sources(lib, target, embedding), bb, "lora", shots, seed, own_steps,
                               tmp, on_step=on_step)
    return side.ranking


def run_library_transfer(config: dict, lib_name: str, run_dir: str | Path, embedding: str = DEFAULT_EMBEDDING,
                         on_step: Callable[[dict], None] | None = None, backbone=None) -> dict:
    """``pitune transfer TARGET --library LIB``: :func:`pitune_core.tune.run.run_transfer` on the library.
    The result (``run_dir/expert``) is an ordinary peft adapter of the library's base."""
    from pitune_core.tune.run import run_transfer  # lazy: loads torch

    lib = open_library(lib_name)
    config = {**config, "method": "lora", "study": str(lib.root), "library": lib.name,
              "library_base": lib.base.id, "embedding": embedding}
    with using_base(lib.base):
        bb = backbone or library_backbone(lib)
        return run_transfer(config, library_sources(lib, config["target"], embedding), run_dir, on_step=on_step,
                            backbone=bb)


def prepare_library_transfer(config: dict, lib_name: str, embedding: str = DEFAULT_EMBEDDING) -> dict:
    """The run's config validated before anything trains (:func:`pitune_core.tune.run.prepare_transfer`)."""
    from pitune_core.tune.run import prepare_transfer  # lazy: loads torch

    lib = open_library(lib_name)
    with using_base(lib.base):
        return prepare_transfer({**config, "method": "lora", "study": str(lib.root)},
                                library_sources(lib, config["target"], embedding))
