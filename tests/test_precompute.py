"""The quick study end to end: files, manifest, verify, resume, determinism."""

import csv
import json
import shutil

import numpy as np

from pitune_core.cli.main import main
from pitune_core.common import read_jsonl, sha256_file
from pitune_core.spec.vocab import LEARNED_PREDICTOR_NAMES
from pitune_core.study.protocol import load_plan as load_protocol_plan
from pitune_core.study.transfer import load_plan as load_transfer_plan
from pitune_core.study.pipeline import run_precompute
from pitune_core.study.plan import StudyPlan
from pitune_core.study.verify import verify_study
from pitune_core.predict.similarity import read_similarity_csv


def test_quick_study_has_every_artifact(quick_study):
    gt, pr = quick_study / "groundtruth/quick-transfer", quick_study / "protocol/quick-few-shot"
    for rel in ["manifest.json", "tasks.json", "backbone/projector.safetensors", "experts/summary.csv",
                "experts/lora/movie_sentiment/adapter_model.safetensors", "experts/ia3/sklearn_digits/adapter_config.json",
                "predict/lora/fisher/embeddings.safetensors", "predict/lora/fisher/similarity.csv",
                "predict/lora/weights/similarity.csv", "predict/lora/data/similarity.csv", "predict/lora/fisher/graph.json",
                "predict/lora/fisher/layout.csv", "predict/lora/fisher_stability.json", "ablation/blank_images.csv",
                "predict/lora/predictor-same_modality/graph.json"]:
        assert (quick_study / rel).exists(), rel
    manifest = json.loads((quick_study / "manifest.json").read_text())
    assert manifest["command"].startswith("pitune precompute")
    assert set(manifest["versions"]) >= {"torch", "transformers", "peft"}
    assert all(len(h) == 64 for h in manifest["files"].values())
    assert manifest["plan_files"]["protocol_plan"] == {"path": "plans/quick/few-shot.json",
                                                       "sha256": sha256_file("plans/quick/few-shot.json")}
    names, S = read_similarity_csv(quick_study / "predict/lora/fisher/similarity.csv")
    assert len(names) == 6 and np.allclose(np.diag(S), 1.0) and np.allclose(S, S.T)
    # the groundtruth stage: every planned pair of the plan file, its reliability, every predictor scored
    plan = load_transfer_plan("plans/quick/transfer.json")
    pairs = read_jsonl(gt / "pairs.jsonl")
    assert len(pairs) == len(plan.tasks) ** 2 * len(plan.seeds)  # sources + from scratch, per target and seed
    quality = json.loads((gt / "quality.json").read_text())
    assert quality["reliability"]["n_seeds"] == 2
    # every planned predictor, and beside them those that learn from the measured transfer (issue 28)
    assert set(quality["table"]["2-shot"]) == {*plan.predictors, *LEARNED_PREDICTOR_NAMES}
    assert json.loads((gt / "fisher_stability.json").read_text())["sizes"].keys() == {"4"}
    # the protocol stage: every planned run logged and reported, none failed
    rows = list(csv.DictReader(open(pr / "results.csv")))
    assert len(rows) == len(load_protocol_plan("plans/quick/few-shot.json").jobs()) == 6
    assert {r["status"] for r in rows} == {"done"} and {r["approach"] for r in rows} == {"pi-tuning", "target-only"}
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    assert "Pre-registered comparison: quick-few-shot" in (pr / "report.md").read_text()


def test_verify_passes_then_reports_corruption(quick_study, tmp_path, capsys):
    study = shutil.copytree(quick_study, tmp_path / "study")
    assert verify_study(study) == []
    assert main(["verify", str(study)]) == 0
    sim = study / "predict/lora/fisher/similarity.csv"
    sim.write_text(sim.read_text().replace("1.0", "0.9", 1))
    (study / "experts/lora/textures/adapter_model.safetensors").unlink()
    problems = verify_study(study, load_experts=False)
    assert "corrupt (sha256 mismatch): predict/lora/fisher/similarity.csv" in problems
    assert "missing: experts/lora/textures/adapter_model.safetensors" in problems
    assert main(["verify", str(study)]) == 1
    assert "pitune precompute --out" in capsys.readouterr().out


def test_resume_skips_verified_stages_and_redoes_broken_ones(quick_study, tmp_path, capsys):
    study = shutil.copytree(quick_study, tmp_path / "study")
    before = (study / "experts/lora/movie_sentiment/adapter_model.safetensors").read_bytes()
    results = study / "protocol/quick-few-shot/results.csv"
    runs = (study / "protocol/quick-few-shot/runs.jsonl").read_text()
    pairs = (study / "groundtruth/quick-transfer/pairs.jsonl").read_text()
    results.write_text("garbage")
    assert main(["precompute", "--quick", "--out", str(study), "--projector", "precomputed/backbone"]) == 0
    err = capsys.readouterr().err
    assert "experts: up to date (checksums verified), skipped" in err
    assert "groundtruth: up to date (checksums verified), skipped" in err
    assert "protocol: running" in err  # its checksum failed, so it was redone (its runs were kept)
    assert "protocol [" not in err  # no run was made again
    assert (study / "experts/lora/movie_sentiment/adapter_model.safetensors").read_bytes() == before
    assert (study / "protocol/quick-few-shot/runs.jsonl").read_text() == runs
    assert (study / "groundtruth/quick-transfer/pairs.jsonl").read_text() == pairs
    assert results.read_text().startswith("key,target,approach,")
    assert verify_study(study, load_experts=False) == []


def test_same_seeds_give_the_same_similarities_and_metrics(tmp_path):
    plan = StudyPlan(tasks=["sklearn_digits", "textures", "emoji_group_question"], extra_methods={},
                     expert_max_steps=8, fisher_n=4)
    stages = ["backbone", "experts", "embeddings", "predict"]
    a = tmp_path / "a"
    b = tmp_path / "b"
    for out in (a, b):
        run_precompute(out, plan, projector="precomputed/backbone", only=stages)
    for rel in ["predict/lora/fisher/similarity.csv", "predict/lora/weights/similarity.csv"]:
        na, Sa = read_similarity_csv(a / rel)
        nb, Sb = read_similarity_csv(b / rel)
        assert na == nb
        np.testing.assert_allclose(Sa, Sb, atol=1e-6)
    assert (a / "experts/summary.csv").read_text().splitlines()[1].split(",")[:7] == \
        (b / "experts/summary.csv").read_text().splitlines()[1].split(",")[:7]


def test_report_quotes_the_study_files(quick_study, capsys):
    assert main(["report", str(quick_study)]) == 0
    text = capsys.readouterr().out
    rows = list(csv.DictReader(open(quick_study / "experts/summary.csv")))
    movie = next(r for r in rows if r["task"] == "movie_sentiment" and r["method"] == "lora")
    assert f"| movie_sentiment | language | accuracy | {100 * float(movie['majority']):.1f} |" in text
    for heading in ("## Experts", "## Predict", "## π-Tuning against the baselines: pre-registered comparisons",
                    "#### Pre-registered comparison: quick-few-shot", "## Does the prediction predict? Ground truth "
                    "`quick-transfer`", "## How it was made"):
        assert heading in text
