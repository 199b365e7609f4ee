"""The experts of a study that a run may draw on, with their predicted similarities."""

from __future__ import annotations

from pathlib import Path

from pitune_core.paths import StudyPaths
from pitune_core.tune.interpolation import InterpolationError


def load_sources(study: str | Path, method: str, embedding: str = "fisher"):
    """The study's experts of one method and the predicted similarities between them."""
    from pitune_core.predict.similarity import read_similarity_csv
    from pitune_core.tune.baselines import Sources

    study = Path(study)
    root = StudyPaths(study).experts_of(method)
    if not root.is_dir():
        raise InterpolationError(f"study {study} has no {method} experts (expected {root}); "
                                 f"run `pitune precompute` or train experts first")
    dirs, gated = admitted_experts({p.name: p for p in sorted(root.iterdir()) if (p / "pitune_expert.json").exists()})
    sim_path = StudyPaths(study).similarity_csv(method, embedding)
    if not sim_path.exists():
        raise InterpolationError(f"no {embedding} similarities for {method} experts in {study} ({sim_path} missing)")
    names, S = read_similarity_csv(sim_path)
    from pitune_core.study.place import merge_similarity  # user tasks placed on this study can be targets

    names, S = merge_similarity(study, method, embedding, names, S)
    return Sources(dirs, names, S, gated=gated)


def admitted_experts(dirs: dict[str, Path]) -> tuple[dict[str, str], dict[str, str]]:
    """Split a library into the experts offered as sources ``{task: dir}`` and the gated ones
    ``{task: reason}`` (:func:`pitune_core.common.admission`; an unreadable expert is gated with
    its one-line error). Every path that picks sources goes through here."""
    from pitune_core.common import admission
    from pitune_core.model.experts import ExpertError, read_expert_meta

    admitted, gated = {}, {}
    for name, d in dirs.items():
        try:
            ok, why = admission(read_expert_meta(d))
        except ExpertError as e:
            ok, why = False, f"not offered as a source: {e}"
        if ok:
            admitted[name] = str(d)
        else:
            gated[name] = why
    return admitted, gated
