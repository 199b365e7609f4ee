"""``pitune report``: the study's numbers as Markdown tables, computed from its files.

Every figure quoted in the README or an issue note should come from this command, so that it can
be reproduced from the study directory alone.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from pitune_core.common import ADMISSION_MARGIN, EXPERT_TYPES, read_jsonl
from pitune_core.paths import StudyPaths
from pitune_core.spec.vocab import PROBE_GAP_POINTS, VL_MARGIN_POINTS
from pitune_core.study.read.evidence import read_protocol_csv
from pitune_core.study.read.results import ROBUSTNESS_FILE, read_matrix_csv, read_results, read_robustness
from pitune_core.study.read.stats import CI_LEVEL, TIE_POINTS
from pitune_core.study.read.stats import fragile as _fragile
from pitune_core.study.robustness import MEASURE_LABELS, MEASURES, robustness_table
from pitune_core.predict.quality import headline
from pitune_core.study.relatedness import RESULT_FILE, markdown
from pitune_core.study.targets import CEILING, target_rule


def _rows(path: Path) -> list[dict]:
    if not path.exists() or path.stat().st_size == 0:
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _ms(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{100 * v.mean():.1f} ± {100 * v.std():.1f}" if len(v) else "–"


def experts_section(root: Path) -> list[str]:
    rows = _rows(StudyPaths(root).expert_summary)
    if not rows:
        return []
    by_task: dict[str, dict] = defaultdict(dict)
    for r in rows:
        by_task[r["task"]][r["method"]] = r
    methods = [m for m in EXPERT_TYPES if any(m in v for v in by_task.values())]
    out = ["## Experts (test split, headline metric, %)", "",
           "| task | modality | metric | majority | zero-shot | " + " | ".join(methods) + " |",
           "|---|---|---|---|---|" + "---|" * len(methods)]
    beats = defaultdict(lambda: [0, 0])
    for task, ms in by_task.items():
        base = ms.get("lora") or next(iter(ms.values()))
        cells = [f"{100 * float(ms[m]['expert']):.1f}" if m in ms else "" for m in methods]
        out.append(f"| {task} | {base['modality']} | {base['metric']} | {100 * float(base['majority']):.1f} | "
                   f"{100 * float(base['zero_shot']):.1f} | " + " | ".join(cells) + " |")
        if "lora" in ms:
            ok = float(ms["lora"]["expert"]) > max(float(base["zero_shot"]), float(base["majority"])) + 0.02
            beats[base["modality"]][0] += ok
            beats[base["modality"]][1] += 1
    out += ["", "LoRA expert beats both zero-shot and majority by more than 2 points: " +
            ", ".join(f"{m} {a}/{b}" for m, (a, b) in beats.items()), ""]
    lora = [r for r in rows if r["method"] == "lora"]
    if lora:
        t = [float(r["train_time_s"]) for r in lora]
        mem = [float(r["peak_memory_mb"]) for r in lora]
        out += [f"LoRA training time per expert: median {np.median(t):.0f} s, max {max(t):.0f} s; "
                f"peak process memory up to {max(mem):.0f} MB.", ""]
    abl = _rows(StudyPaths(root).blank_images)
    if abl and "score" not in abl[0]:  # a study written before the image-pathway checks
        out += ["### Vision-language experts with images blanked (accuracy, %)", "",
                "| task | with images | images blanked |", "|---|---|---|"]
        out += [f"| {r['task']} | {100 * float(r['accuracy']):.1f} | {100 * float(r['accuracy_images_blanked']):.1f} |"
                for r in abl]
        out.append("")
    out += image_pathway_section(root, lora)
    if lora and "admitted" in lora[0]:
        kept, dropped = target_rule(lora)
        out += [f"### Targets by the rule (`pitune_core/study/targets.py`, committed before these experts were trained)",
                "", f"A task is a target only if its LoRA expert is admitted (not at chance) and neither it nor "
                f"zero-shot scores ≥ {100 * CEILING:.0f} on test (not at ceiling): {len(kept)} of {len(lora)} tasks.",
                ""]
        if dropped:
            out += ["| dropped | why |", "|---|---|"] + [f"| {t} | {why} |" for t, why in dropped.items()] + [""]
    gated = [r for r in rows if str(r.get("admitted", "1")) == "0"]
    if "admitted" in (rows[0] if rows else {}):
        out += ["### The library's gate", "",
                f"An expert is offered as a source only if it beats max(zero-shot, majority) on its own "
                f"validation split by {100 * ADMISSION_MARGIN:.0f} points (`pitune_core.common.admission`). "
                f"{len(rows) - len(gated)} of {len(rows)} experts are admitted"
                + (":" if not gated else "; not offered:"), ""]
        if gated:
            out += ["| task | expert type | why |", "|---|---|---|"]
            out += [f"| {r['task']} | {r['method']} | {r['gate']} |" for r in gated]
            out.append("")
    proj = StudyPaths(root).projector_meta
    if proj.exists():
        meta = json.loads(proj.read_text())
        zs = meta["metrics"]["zero_shot_val"]
        held = set(meta.get("held_out", []))
        out += ["### Projector alignment: zero-shot on validation splits (%)", "",
                "| task | aligned on its train split | zero-shot |", "|---|---|---|"]
        out += [f"| {t} | {'no (held out)' if t in held else 'yes'} | {100 * v:.1f} |" for t, v in zs.items()]
        out.append("")
        tasks_json = StudyPaths(root).tasks_json
        if tasks_json.exists():  # the record is the projector's, made when it was aligned
            recorded = json.loads(tasks_json.read_text())
            names = [t["name"] for t in recorded]
            image = {t["name"] for t in recorded if t.get("modality") != "language"}
            gone, new = [t for t in zs if t not in names], [t for t in names if t in image and t not in zs]
            if gone or new:
                out += ["The record is the projector's, made when it was aligned"
                        + (f"; retired from the suite since: {', '.join(gone)}" if gone else "")
                        + (f"; added since (their zero-shot scores are in `experts/summary.csv`): {', '.join(new)}"
                           if new else "") + ".", ""]
    return out


def image_pathway_section(root: Path, lora: list[dict]) -> list[str]:
    """Vision experts against their linear probe; vision-language experts against zero-shot, majority
    and themselves with the images blanked (test split, the task's headline metric, points)."""
    by_task = {r["task"]: r for r in lora}
    probe = _rows(StudyPaths(root).linear_probe)
    abl = [r for r in _rows(StudyPaths(root).blank_images) if "score" in r]
    out = []
    if probe:
        out += ["### Image pathway: vision experts vs a linear probe on their frozen image features (test, points)",
                "", f"Bar: the LoRA expert within {PROBE_GAP_POINTS:.0f} points of the probe (logistic regression "
                "on every visual token, C chosen on val).", "",
                "| task | metric | LoRA expert | linear probe | expert − probe | meets the bar |", "|---|---|---|---|---|---|"]
        for r in probe:
            e = by_task.get(r["task"])
            if e is None:
                continue
            gap = 100 * (float(e["expert"]) - float(r["probe_test"]))
            out.append(f"| {r['task']} | {r['metric']} | {100 * float(e['expert']):.1f} | {100 * float(r['probe_test']):.1f} "
                       f"| {gap:+.1f} | {'yes' if gap >= -PROBE_GAP_POINTS else '**no**'} |")
        out.append("")
    if abl:
        out += ["### Image pathway: vision-language experts (test, points)", "",
                f"Bar: the LoRA expert ≥ max(zero-shot, majority) + {VL_MARGIN_POINTS:.0f}, and its score drops by "
                f"≥ {VL_MARGIN_POINTS:.0f} when every image is blanked.", "",
                "| task | LoRA expert | zero-shot | majority | images blanked | drop | meets the bar |",
                "|---|---|---|---|---|---|---|"]
        for r in abl:
            e = by_task.get(r["task"])
            if e is None:
                continue
            exp, zs, maj = (100 * float(e[k]) for k in ("expert", "zero_shot", "majority"))
            blank = 100 * float(r["score_images_blanked"])
            drop = 100 * float(r["score"]) - blank
            ok = exp >= max(zs, maj) + VL_MARGIN_POINTS and drop >= VL_MARGIN_POINTS
            out.append(f"| {r['task']} | {exp:.1f} | {zs:.1f} | {maj:.1f} | {blank:.1f} | {drop:+.1f} | "
                       f"{'yes' if ok else '**no**'} |")
        out.append("")
    return out


def predict_section(root: Path) -> list[str]:
    out = []
    stab = StudyPaths(root).fisher_stability("lora")
    if stab.exists():
        s = json.loads(stab.read_text())
        out += ["## Predict", "", f"Fisher neighbour stability (N vs 2N samples): mean top-{s['k']} overlap "
                f"{s['mean_topk_overlap']:.2f}, Spearman over all pairs {s['spearman_all_pairs']:.3f}.", ""]
    q = StudyPaths(root).predict_quality
    if q.exists():
        quality = json.loads(q.read_text())
        hit_key = next(k for k in next(iter(quality.values())) if k.endswith("_hit_mean"))
        kk = hit_key.split("_")[0]
        out += ["### Does the prediction predict? (mean over targets; ± over seeds)", "",
                f"| embedding | Spearman(similarity, gain) | {kk} hit rate |", "|---|---|---|"]
        for emb, v in quality.items():
            out.append(f"| {emb} | {v['spearman_mean']:.3f} ± {v['spearman_std']:.3f} | "
                       f"{v[hit_key]:.2f} ± {v[hit_key.replace('mean', 'std')]:.2f} |")
        out.append("")
    tm = StudyPaths(root).transfer_matrix
    if tm.exists():
        _, _, M = read_matrix_csv(tm)
        out += [f"Transfer matrix: {M.shape[0]} tasks, mean gain over scratch {np.nanmean(M):+.1f} points, "
                f"{int(np.sum(M > 0))} of {int(np.sum(~np.isnan(M)))} pairs positive.", ""]
    return out


def compare_section(root: Path) -> list[str]:
    p = StudyPaths(root).results_csv
    rows = [{**r, "shots": str(r["shots"])} for r in read_results(p)] if p.is_file() else []
    if not rows:
        return []
    tasks = {t["name"]: t["modality"] for t in json.loads(StudyPaths(root).tasks_json.read_text())} \
        if StudyPaths(root).tasks_json.exists() else {}
    shots = sorted({r["shots"] for r in rows}, key=lambda s: (s == "full", int(s) if s != "full" else 0))
    methods = list(dict.fromkeys(r["approach"] for r in rows))
    out = ["## π-Tuning against the baselines (test, headline metric, %, mean ± std over seeds)", ""]
    for s in shots:
        sub = [r for r in rows if r["shots"] == s]
        targets = list(dict.fromkeys(r["target"] for r in sub))
        ms = [m for m in methods if any(r["approach"] == m for r in sub)]
        out += [f"### shots = {s}", "", "| approach | " + " | ".join(targets) + " | mean |",
                "|---|" + "---|" * (len(targets) + 1)]
        for m in ms:
            cells, means = [], []
            for t in targets:
                v = [r["score"] for r in sub if r["approach"] == m and r["target"] == t]
                cells.append(_ms(v))
                if v:
                    means.append(np.mean(v))
            out.append(f"| {m} | " + " | ".join(cells) + f" | {100 * np.mean(means):.1f} |")
        out.append("")
        if tasks:
            out += ["Per modality (mean over targets and seeds):", "", "| approach | " +
                    " | ".join(sorted({tasks.get(t, '?') for t in targets})) + " |",
                    "|---|" + "---|" * len({tasks.get(t, '?') for t in targets})]
            for m in ms:
                cells = []
                for mod in sorted({tasks.get(t, "?") for t in targets}):
                    v = [r["score"] for r in sub if r["approach"] == m and tasks.get(r["target"]) == mod]
                    cells.append(_ms(v))
                out.append(f"| {m} | " + " | ".join(cells) + " |")
            out.append("")
    return out


def protocol_section(root: Path) -> list[str]:
    """Each pre-registered comparison's own report (``protocol/<plan>/report.md``, written by
    ``pitune study status`` from every planned row), one level down."""
    base = StudyPaths(root).protocol("x").parent
    out = []
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        f = d / "report.md"
        if f.is_file() and not f.is_symlink():
            out += ["#" + ln if ln.startswith("#") else ln for ln in f.read_text().splitlines()] + [""]
            out += robustness_section(root, d.name)
    return ["## π-Tuning against the baselines: pre-registered comparisons", ""] + out if out else []


def robustness_section(root: Path, plan: str) -> list[str]:
    """The robustness of a comparison's tuned models (``protocol/<plan>/robustness.csv``,
    :func:`pitune_core.study.robustness.robustness_table`); nothing when the plan holds no robustness
    row, one line when its files cannot be read."""
    d = StudyPaths(root).protocol(plan)
    rel = f"protocol/{plan}/{ROBUSTNESS_FILE}"
    if not (d / ROBUSTNESS_FILE).is_file() or not (d / "results.csv").is_file():
        return []
    try:
        runs = read_protocol_csv(d / "results.csv", f"protocol/{plan}/results.csv")
        table = robustness_table(runs, read_robustness(d / ROBUSTNESS_FILE, runs, rel))
    except (OSError, ValueError) as e:
        return [f"#### Robustness of the tuned models: {plan}", "", f"`{rel}` cannot be read: {e}", ""]
    return robustness_markdown(table, plan, rel) if table["runs_scored"] else []


def _pm(c: dict) -> str:
    """A table cell: mean ± std (n targets), points."""
    return "–" if not c["n"] else f"{_num(c['mean'], 1)} ± {_num(c['std'], 1)} ({c['n']})"


def robustness_markdown(table: dict, plan: str, source: str) -> list[str]:
    """Markdown of :func:`pitune_core.study.robustness.robustness_table`: the approach table and the
    paired differences, regime by regime."""
    done = sum(g["runs_done"] for g in table["regimes"])
    out = [f"#### Robustness of the tuned models: {plan}", "",
           f"{table['runs_scored']} of the {done} done runs of these regimes were also scored, with no further "
           f"training, on shifted test sets with the same labels from other tasks of their family and on corrupted "
           f"copies of their own test set (`{source}`). Points, mean ± std (ddof=1) over targets (each target the "
           "mean of its seeds; a target enters once every planned seed of the approach is scored), n targets in "
           "brackets (shifted: only the targets that have a shifted test set). The gaps (shifted − in-distribution, "
           "corrupted − in-distribution) are the effective robustness: the drop off the model's own test set, "
           "closer to 0 is more robust.", "",
           "| regime | approach | " + " | ".join(MEASURE_LABELS[m] for m in MEASURES) + " |",
           "|---|---|" + "---:|" * len(MEASURES)]
    for g in table["regimes"]:
        out += [f"| {g['regime']} | {a['approach']} | " + " | ".join(_pm(a[m]) for m in MEASURES) + " |"
                for a in g["approaches"]]
    diffs = [d for g in table["regimes"] for d in g["diffs"]]
    if not diffs:
        return out + ["", "No π-Tuning run is scored, so no paired difference.", ""]
    out += ["", f"Paired differences over targets: pi-tuning minus each approach (the comparison's reference; the "
            f"issue's goals compare π-Tuning with target-only and with every other approach; a positive difference "
            f"on a gap means π-Tuning loses less off its own test set), bootstrap {int(CI_LEVEL * 100)}% CI over "
            f"targets (BCa, the rule; the plain percentile interval beside it, \"fragile\" where the two disagree "
            f"on excluding 0), two-sided Wilcoxon signed-rank p, wins/ties/losses (tie: |d| ≤ {TIE_POINTS}).", "",
            "| regime | versus | measure | n targets | mean diff | 95% CI | percentile CI | Wilcoxon p | W/T/L |",
            "|---|---|---|---:|---:|---|---|---:|---|"]
    for d in diffs:
        head = f"| {d['regime']} | {d['b']} | {MEASURE_LABELS[d['measure']]} |"
        if not d["n"]:
            out.append(f"{head} 0 | – | – | – | – | – |")
            continue
        fragile = " fragile" if _fragile(d['ci_low'], d['ci_high'], d['pct_low'], d['pct_high']) else ""
        out.append(f"{head} {d['n']} | {_num(d['mean'], 1, sign=True)} | [{_num(d['ci_low'], 1, sign=True)}, "
                   f"{_num(d['ci_high'], 1, sign=True)}] | [{_num(d['pct_low'], 1, sign=True)}, "
                   f"{_num(d['pct_high'], 1, sign=True)}]{fragile} | {_num(d['p_wilcoxon'], 3)} | "
                   f"{d['wins']}/{d['ties']}/{d['losses']} |")
    return out + [""]


def groundtruth_section(root: Path) -> list[str]:
    """The transfer ground truth's reliability (the noise ceiling) and each predictor's quality at
    each target data size (``groundtruth/<plan>/quality.json``, written by ``pitune transfer-study
    --stage quality``)."""
    base = StudyPaths(root).groundtruth("x").parent
    out = []
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        rel_f = d / RESULT_FILE
        if rel_f.is_file() and not rel_f.is_symlink():
            out += [f"## Does the task world carry transfer? Ground truth `{d.name}`", "", *markdown(json.loads(rel_f.read_text()))]
        f = d / "quality.json"
        if not f.is_file() or f.is_symlink():
            continue
        q = json.loads(f.read_text())
        rel = q.get("reliability", {})
        m = rel.get("mean", {})
        out += [f"## Does the prediction predict? Ground truth `{d.name}`", "",
                f"Reliability of the seed-averaged gains ({rel.get('n_seeds')} seeds): split-half Spearman "
                f"{_num(m.get('r_half'))}, Spearman–Brown {_num(m.get('reliability'))}, Spearman ceiling "
                f"{_num(m.get('ceiling_spearman'))}.", ""]
        out += _where_pairs_ran(d)
        out += ["| target data | predictor | Spearman [95% CI] | of ceiling | top-k hit | regret (pts) | "
                "vs same-modality (Spearman diff [95% CI]) | s / target |", "|---|---|---|---|---|---|---|---|"]
        for size, preds in q.get("table", {}).items():
            for p, v in sorted(preds.items(), key=lambda kv: -(kv[1]["summary"]["spearman"]["mean"] or -9)):
                sm = v["summary"]
                hit = _topk_hit(sm)
                ci = sm["spearman"].get("ci") or [None, None]
                vs = v.get("vs_same_modality") or {}
                vci = vs.get("ci") or [None, None]
                diff = "–" if p == "same_modality" or not vs else \
                    f"{_num(vs.get('mean_difference'), sign=True)} [{_num(vci[0], sign=True)}, {_num(vci[1], sign=True)}]"
                if diff != "–" and "wilcoxon_p" in vs:  # tables since issue 28: Wilcoxon and win/tie/loss beside the CI
                    diff += f"; Wilcoxon p {_num(vs['wilcoxon_p'])}, W/T/L {vs['wins']}/{vs['ties']}/{vs['losses']}"
                out.append(f"| {size} | {p} | {_num(sm['spearman']['mean'])} [{_num(ci[0])}, {_num(ci[1])}] | "
                           f"{_num(sm['spearman'].get('fraction_of_ceiling'), pct=True)} | {_num(hit)} | "
                           f"{_num(sm.get('regret', {}).get('mean'))} | {diff} | {_num(v.get('seconds_per_target'), nd=1)} |")
        out += [""] + _verdict(q) + _within(q) + _stability(d)
    return out


def _within(q: dict) -> list[str]:
    """Spearman among the target's own-modality sources, per predictor and target data size
    (``within_modality`` of quality.json): what a predictor knows beyond the same-modality rule."""
    sizes = [s for s, preds in q.get("table", {}).items() if any((v.get("within_modality") or {}).get("n_targets")
                                                                 for v in preds.values())]
    if not sizes:
        return []
    preds = sorted({p for s in sizes for p in q["table"][s]})

    def cell(v):
        wm = (v or {}).get("within_modality") or {}
        if wm.get("mean") is None:
            return "–"
        ci = wm.get("ci") or [None, None]
        return f"{_num(wm['mean'], sign=True)} [{_num(ci[0], sign=True)}, {_num(ci[1], sign=True)}] ({wm['n_targets']})"
    first = sizes[0]
    preds.sort(key=lambda p: -((q["table"][first].get(p) or {}).get("within_modality") or {}).get("mean", -9) or 9)
    out = ["**Beyond modality** (exploratory, added after the predictors were scored; not part of the goal): "
           "Spearman over the target's own-modality sources only, mean over targets [95% CI] (targets with "
           "≥ 3 such sources). Same-modality is 0 here by construction; a predictor above 0 orders sources "
           "within a modality, which the trivial rule cannot.", "",
           "| predictor | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes)]
    for p in preds:
        out.append(f"| {p} | " + " | ".join(cell(q["table"][s].get(p)) for s in sizes) + " |")
    return out + [""]


def _where_pairs_ran(d: Path) -> list[str]:
    """How many pairs ran on which device (rows without the field predate it: CPU), and the
    device reproducibility check (``device_check.json``, bench/device_reproducibility.py)."""
    from collections import Counter

    p = d / "pairs.jsonl"
    if not p.is_file() or p.is_symlink():
        return []
    where = Counter(r.get("device", "cpu (before devices were logged)") for r in read_jsonl(p) if isinstance(r, dict))
    out = ["Pairs by device: " + "; ".join(f"{n:,} on {w}" for w, n in where.most_common()) + "."]
    c = d / "device_check.json"
    if c.is_file() and not c.is_symlink():
        chk = json.loads(c.read_text())
        out[-1] += (f" Rerun here, {chk['identical']} of {chk['n']} logged pairs gave the identical score "
                    f"(`{c.name}`, bench/device_reproducibility.py).")
    return out + [""]


def _verdict(q: dict) -> list[str]:
    """The issue's goal for the best predictor at the smallest few-shot size, checked plainly."""
    if headline(q) is None:
        return []
    size, best = headline(q)
    v = q["table"][size][best]
    sm = v["summary"]
    frac = sm["spearman"].get("fraction_of_ceiling")
    hit = _topk_hit(sm)
    vs = v.get("vs_same_modality") or {}
    lo = (vs.get("ci") or [None])[0]
    beats = best != "same_modality" and lo is not None and lo > 0
    ok = frac is not None and frac >= 0.8 and hit is not None and hit >= 0.75 and beats
    fisher = q["table"][size].get("fisher")
    fs = ""
    if fisher and best != "fisher":
        f_vs = fisher.get("vs_same_modality") or {}
        fci = f_vs.get("ci") or [None, None]
        fs = (f" Fisher: Spearman {_num(fisher['summary']['spearman']['mean'])}, vs same-modality "
              f"{_num(f_vs.get('mean_difference'), sign=True)} [{_num(fci[0], sign=True)}, {_num(fci[1], sign=True)}].")
    return [f"**Goal** (issue 12: at {size}, the best predictor reaches ≥ 80 % of the noise ceiling, top-3 hit "
            f"≥ 0.75, and beats same-modality with its CI above 0): **{'met' if ok else 'not met'}**. Best at "
            f"{size} by Spearman: {best} ({_num(sm['spearman']['mean'])}, {_num(frac, pct=True)} of the ceiling, "
            f"top-k hit {_num(hit)}"
            + ("" if best == "same_modality" else f", vs same-modality {'CI above 0' if beats else 'CI not above 0'}")
            + ")." + fs + " The dashboard defaults to it wherever the study draws it as a graph.", ""]


def _topk_hit(summary: dict) -> float | None:
    """The mean top-k hit (k of the plan: ``top3_hit``, ...; not top-1) of a predictor's summary."""
    return next((summary[k]["mean"] for k in summary if k.startswith("top") and k.endswith("_hit") and k != "top1_hit"),
                None)


def _stability(d: Path) -> list[str]:
    f = d / "fisher_stability.json"
    if not f.is_file() or f.is_symlink():
        return []
    res = json.loads(f.read_text())
    sizes = {n: v for n, v in res.get("sizes", {}).items() if "mean_topk_overlap" in v}
    if not sizes:
        return []
    return [f"Fisher top-{res.get('k')} stability from disjoint samples (two independent sets of N training "
            f"examples per task): " + ", ".join(f"N = {n}: overlap {_num(v['mean_topk_overlap'], nd=2)}, Spearman "
                                                 f"of all pairs {_num(v.get('spearman_all_pairs'), nd=2)}"
                                                 for n, v in sizes.items())
            + f"; stable (mean overlap ≥ {res.get('threshold')}) from N = {res.get('samples_for_stable_topk')}.", ""]


def _num(x, nd: int = 3, pct: bool = False, sign: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    return f"{100 * x:.0f} %" if pct else (f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}")


def stages_section(root: Path) -> list[str]:
    mf = StudyPaths(root).manifest
    if not mf.exists():
        return []
    m = json.loads(mf.read_text())
    secs = {k: v for k, v in m.get("stage_seconds", {}).items() if v is not None}
    hw = m.get("hardware", {})
    sp = StudyPaths(root)
    added = [f"`{base.name}/{d.name}/` (`pitune {cmd}`)"
             for base, cmd in ((sp.groundtruth("x").parent, "transfer-study"), (sp.protocol("x").parent, "study run"))
             for d in (sorted(base.iterdir()) if base.is_dir() else []) if d.is_dir()]
    return ["## How it was made", "", f"`{m.get('command')}` on {hw.get('cpu_count')} CPUs "
            f"({hw.get('device')}, torch threads {hw.get('torch_threads')}, GPU {hw.get('gpu')}), "
            f"{m.get('started')} → {m.get('finished')}.", "",
            "Stage times (s, last run of each stage): " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items()), "",
            *([f"Measurements in this study, each run by its own command (or the matching `pitune precompute` "
               f"stage) and described in its section above: {', '.join(added)}.", ""]
              if added else [])]


def report(root: str | Path) -> str:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no study at {root}; build one with `pitune precompute --out {root}`")
    lines = [f"# pitune study report: {root}", ""]
    for section in (experts_section, predict_section, compare_section, protocol_section, groundtruth_section,
                    stages_section):
        lines += section(root)
    return "\n".join(lines) + "\n"
