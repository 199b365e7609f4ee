"""A study's ground-truth files (``groundtruth/<plan>/``: quality.json, reliability.json, pairs.jsonl),
read bounded and validated for the dashboard (:meth:`pitune_core.study.read.reader.Study.groundtruth_quality`
and its neighbours); one readable line (:class:`GroundTruthError`) for a file that cannot be shown."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

from pitune_core.common import check_plan_name, check_task_name
from pitune_core.spec.vocab import SCORED_PREDICTOR_NAMES


#: files of a ground-truth folder (``StudyPaths.groundtruth(plan)``, ``pitune transfer-study``)
GROUNDTRUTH_FILES = ("quality.json", "reliability.json", "pairs.jsonl")
GT_MAX_JSON_BYTES = 16 << 20  # quality.json of 12 predictors x 3 sizes x 16 targets is ~0.3 MB
GT_MAX_PAIRS_BYTES = 64 << 20  # pairs.jsonl of 16 tasks x 6 seeds is ~0.2 MB
GT_MAX_TARGETS = 10_000


class GroundTruthError(ValueError):
    """A ground-truth file that cannot be shown (one readable line; the page shows it as text)."""


def gt_file(path: Path, root: Path, limit: int) -> str:
    """``path`` relative to the study, once it is known to be a regular file within ``limit`` bytes."""
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    if path.is_symlink() or not path.is_file():
        raise GroundTruthError(f"{rel} is not a regular file (symbolic links are refused)")
    size = path.stat().st_size
    if size > limit:
        raise GroundTruthError(f"{rel} is {size / 2**20:.1f} MB, over the limit of {limit >> 20} MB")
    return rel


def read_bounded_json(path: Path, root: Path) -> Any:
    rel = gt_file(path, root, GT_MAX_JSON_BYTES)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise GroundTruthError(f"{rel} is not valid JSON: {str(e)[:120]}") from None


def _gt_num(x: Any, where: str) -> float | None:
    """A number read from a file: finite float, or None (null, NaN and inf all mean "not defined")."""
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise GroundTruthError(f"{where} is not a number ({type(x).__name__})")
    x = float(x)
    return x if math.isfinite(x) else None


def _gt_int(x: Any, where: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= 10**9:
        raise GroundTruthError(f"{where} is not a count ({str(x)[:40]!r})")
    return int(x)


def _gt_obj(x: Any, where: str, most: int = 1000) -> dict:
    if not isinstance(x, dict):
        raise GroundTruthError(f"{where} is not an object ({type(x).__name__})")
    if len(x) > most:
        raise GroundTruthError(f"{where} has {len(x)} entries, over the limit of {most}")
    return x


def _gt_ci(x: Any, where: str) -> tuple[float | None, float | None]:
    if x is None:
        return None, None
    if not isinstance(x, list) or len(x) != 2:
        raise GroundTruthError(f"{where} is not a [low, high] pair")
    return _gt_num(x[0], where), _gt_num(x[1], where)


def _gt_name(x: Any, pattern: str, where: str) -> str:
    import re

    if not isinstance(x, str) or not re.fullmatch(pattern, x):
        raise GroundTruthError(f"{where}: {str(x)[:60]!r} is not an allowed name")
    return x


_GT_METRIC = r"spearman|top[1-9][0-9]?_hit|ndcg3|regret"
_GT_SIZE = r"full|[1-9][0-9]{0,4}-shot"
_GT_REL_FIELD = r"r_half|reliability|ceiling_spearman|oracle_(?:spearman|top[1-9][0-9]?_hit|ndcg3|regret)"


def _gt_task(x: Any, where: str) -> str:
    try:
        return check_task_name(x, where)
    except ValueError as e:
        raise GroundTruthError(str(e)) from None


def _gt_numbers(x: Any, pattern: str, where: str) -> dict[str, float | None]:
    return {_gt_name(k, pattern, where): _gt_num(v, f"{where} {k}") for k, v in _gt_obj(x, where, 64).items()}


def parse_gt_quality(raw: Any, name: str) -> dict:
    """Validate and copy (known fields only) the structure :func:`~pitune_core.study.transfer.quality_table` writes."""
    where = f"groundtruth/{name}/quality.json"
    raw = _gt_obj(raw, where)
    plan = raw.get("plan")
    if plan is not None:
        try:
            check_plan_name(plan)
        except ValueError as e:
            raise GroundTruthError(f"{where}: {e}") from None
    key = raw.get("key")
    if key is not None:
        _gt_name(key, r"[0-9a-f]{1,64}", f"{where} key")
    rel = _gt_obj(raw.get("reliability") or {}, f"{where} reliability")
    reliability = {"mean": _gt_numbers(rel.get("mean") or {}, _GT_REL_FIELD, f"{where} reliability.mean"),
                   "reliability_of_mean_r": _gt_num(rel.get("reliability_of_mean_r"), f"{where} reliability_of_mean_r"),
                   "n_seeds": _gt_int(rel["n_seeds"], f"{where} n_seeds") if rel.get("n_seeds") is not None else None}
    table, metrics = {}, []
    for label, preds in _gt_obj(raw.get("table"), f"{where} table", 16).items():
        _gt_name(label, _GT_SIZE, f"{where} table (target data size)")
        out = table[label] = {}
        for p, v in _gt_obj(preds, f"{where} table.{label}", len(SCORED_PREDICTOR_NAMES)).items():
            if p not in SCORED_PREDICTOR_NAMES:
                raise GroundTruthError(f"{where} table.{label}: unknown predictor {str(p)[:60]!r} "
                                       f"(known: {', '.join(SCORED_PREDICTOR_NAMES)})")
            w = f"{where} table.{label}.{p}"
            v = _gt_obj(v, w)
            summary = {}
            for m, s in _gt_obj(v.get("summary"), f"{w}.summary", 16).items():
                _gt_name(m, _GT_METRIC, f"{w}.summary (metric)")
                s = _gt_obj(s, f"{w}.summary.{m}")
                summary[m] = {"mean": _gt_num(s.get("mean"), f"{w}.{m}.mean"),
                              "ci": _gt_ci(s.get("ci"), f"{w}.{m}.ci"),
                              "ceiling": _gt_num(s.get("ceiling"), f"{w}.{m}.ceiling")}
                for f, fci in (("fraction_of_ceiling", "fraction_ci"), ("excess_over_ceiling", "excess_ci")):
                    if f in s:
                        summary[m][f] = _gt_num(s[f], f"{w}.{m}.{f}")
                        summary[m][fci] = _gt_ci(s.get(fci), f"{w}.{m}.{fci}")
                if m not in metrics:
                    metrics.append(m)
            per_target = {_gt_task(t, f"{w}.per_target names a task"): _gt_numbers(q, _GT_METRIC + "|seconds|within_modality",
                                                                                   f"{w}.per_target.{t}")
                          for t, q in _gt_obj(v.get("per_target") or {}, f"{w}.per_target", GT_MAX_TARGETS).items()}
            vs = v.get("vs_same_modality")
            if vs is not None:
                raw_vs = vs = _gt_obj(vs, f"{w}.vs_same_modality")
                vs = {"metric": _gt_name(vs.get("metric", "spearman"), _GT_METRIC, f"{w}.vs_same_modality.metric"),
                      "n_targets": _gt_int(vs.get("n_targets", 0), f"{w}.vs_same_modality.n_targets"),
                      "mean_difference": _gt_num(vs.get("mean_difference"), f"{w}.vs_same_modality.mean_difference"),
                      "ci": _gt_ci(vs.get("ci"), f"{w}.vs_same_modality.ci")}
                if raw_vs.get("wilcoxon_p") is not None:  # tables since issue 28 (stats.paired) also carry these
                    vs["wilcoxon_p"] = _gt_num(raw_vs["wilcoxon_p"], f"{w}.vs_same_modality.wilcoxon_p")
                    for f in ("wins", "ties", "losses"):
                        vs[f] = _gt_int(raw_vs.get(f, 0), f"{w}.vs_same_modality.{f}")
            wm = v.get("within_modality")  # Spearman among the target's own-modality sources (optional)
            if wm is not None:
                wm = _gt_obj(wm, f"{w}.within_modality")
                wm = {"mean": _gt_num(wm.get("mean"), f"{w}.within_modality.mean"),
                      "ci": _gt_ci(wm.get("ci"), f"{w}.within_modality.ci"),
                      "n_targets": _gt_int(wm.get("n_targets", 0), f"{w}.within_modality.n_targets")}
            out[p] = {"n_targets": _gt_int(v.get("n_targets"), f"{w}.n_targets"), "summary": summary,
                      "per_target": per_target, "seconds_per_target": _gt_num(v.get("seconds_per_target"),
                                                                               f"{w}.seconds_per_target"),
                      "vs_same_modality": vs, "within_modality": wm}
    order = {"spearman": 0, "top1_hit": 1, "ndcg3": 3, "regret": 4}
    metrics.sort(key=lambda m: (order.get(m, 2), m))
    sizes = sorted(table, key=lambda s: (s == "full", int(s.split("-")[0]) if s != "full" else 0))
    return {"plan": plan or name, "key": key, "reliability": reliability, "sizes": sizes, "metrics": metrics,
            "table": {s: table[s] for s in sizes}}


def versus_rule(quality: Mapping, size: str, best: str) -> str:
    """How the default predictor stands against the trivial same-modality rule at ``size``: a
    tie when the bootstrap CI of the paired Spearman difference holds 0 (said plainly, so a
    default chosen by a hair does not read as a win); '' when there is nothing to compare."""
    vs = ((quality.get("table") or {}).get(size) or {}).get(best, {}).get("vs_same_modality") or {}
    d, ci = vs.get("mean_difference"), vs.get("ci") or (None, None)
    if best == "same_modality" or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (d, *ci)):
        return ""
    word = "ahead of" if ci[0] > 0 else ("behind" if ci[1] < 0 else "tied with")
    return f"; {word} same-modality: {d:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def parse_gt_reliability(raw: Any, name: str) -> dict:
    """Validate and copy :func:`pitune_core.predict.quality.seed_reliability`'s output."""
    where = f"groundtruth/{name}/reliability.json"
    raw = _gt_obj(raw, where)
    per = {_gt_task(t, f"{where} per_target names a task"): _gt_numbers(v, _GT_REL_FIELD, f"{where} per_target.{t}")
           for t, v in _gt_obj(raw.get("per_target") or {}, f"{where} per_target", GT_MAX_TARGETS).items()}
    return {"n_seeds": _gt_int(raw.get("n_seeds"), f"{where} n_seeds"),
            "n_splits": _gt_int(raw["n_splits"], f"{where} n_splits") if raw.get("n_splits") is not None else None,
            "per_target": per, "mean": _gt_numbers(raw.get("mean") or {}, _GT_REL_FIELD, f"{where} mean"),
            "reliability_of_mean_r": _gt_num(raw.get("reliability_of_mean_r"), f"{where} reliability_of_mean_r")}


def read_gt_gains(path: Path, root: Path, key: str | None, order: Sequence[str]) -> tuple[list[str], list[str], Any, dict]:
    """Seed-averaged gains (points) from a pairs log; records that are not of the shape
    ``{target, source, seed, score[, key]}`` with identifiers and a finite score in [0, 1] are
    skipped and counted (a line cut by a crash is one)."""
    import numpy as np

    rel = gt_file(path, root, GT_MAX_PAIRS_BYTES)
    recs: dict[str | None, dict[tuple[str, str, int], float]] = {}
    skipped = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                r = json.loads(line)
                t, s, seed, score, k = r["target"], r["source"], r["seed"], r["score"], r.get("key")
                check_task_name(t)
                if s != "scratch":
                    check_task_name(s)
                ok = (isinstance(seed, int) and not isinstance(seed, bool) and isinstance(score, (int, float))
                      and not isinstance(score, bool) and math.isfinite(score) and 0 <= score <= 1
                      and (k is None or isinstance(k, str) and len(k) <= 64))
            except (ValueError, KeyError, TypeError, RecursionError):
                ok = False
            if not ok:
                skipped += 1
                continue
            recs.setdefault(k, {})[(t, s, seed)] = float(score)
    if key is None and len(recs) > 1:
        raise GroundTruthError(f"{rel} holds pairs of {len(recs)} configurations and no quality.json names one")
    done = recs.get(key, {}) if key is not None else next(iter(recs.values()), {})
    if key is not None:
        done = {**recs.get(None, {}), **done}  # records that predate keys belong to the log's one budget
    pos = {n: i for i, n in enumerate(order)}
    names = sorted({t for t, _, _ in done} | {s for _, s, _ in done if s != "scratch"},
                   key=lambda n: (pos.get(n, len(pos)), n))
    targets = [t for t in names if any((t, "scratch", sd) in done for sd in {k[2] for k in done})]
    seeds = sorted({k[2] for k in done})
    acc = np.zeros((len(targets), len(names)))
    cnt = np.zeros((len(targets), len(names)))
    for (t, s, seed), score in done.items():
        base = done.get((t, "scratch", seed))
        if s != "scratch" and s != t and base is not None and t in targets:
            i, j = targets.index(t), names.index(s)
            acc[i, j] += 100.0 * (score - base)
            cnt[i, j] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        G = np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)
    return targets, names, G, {"key": key, "seeds": seeds, "skipped": skipped}
