"""The quick study end to end: files, manifest, verify, resume, determinism."""

import csv
import json
import shutil

import numpy as np

from pitune_core.cli.main import main
from pitune_core.study.pipeline import run_precompute
from pitune_core.study.plan import StudyPlan
from pitune_core.study.verify import verify_study
from pitune_core.predict.similarity import read_similarity_csv


def test_quick_study_has_every_artifact(quick_study):
    for rel in ["manifest.json", "tasks.json", "backbone/projector.safetensors", "experts/summary.csv",
                "experts/lora/movie_sentiment/adapter_model.safetensors", "experts/ia3/sklearn_digits/adapter_config.json",
                "predict/lora/fisher/embeddings.safetensors", "predict/lora/fisher/similarity.csv",
                "predict/lora/weights/similarity.csv", "predict/lora/data/similarity.csv", "predict/lora/fisher/graph.json",
                "predict/lora/fisher/layout.csv", "predict/lora/fisher_stability.json", "transfer/transfer_matrix.csv",
                "transfer/predict_quality.json", "compare/results.csv", "ablation/blank_images.csv"]:
        assert (quick_study / rel).exists(), rel
    manifest = json.loads((quick_study / "manifest.json").read_text())
    assert manifest["command"].startswith("pitune precompute")
    assert set(manifest["versions"]) >= {"torch", "transformers", "peft"}
    assert all(len(h) == 64 for h in manifest["files"].values())
    names, S = read_similarity_csv(quick_study / "predict/lora/fisher/similarity.csv")
    assert len(names) == 6 and np.allclose(np.diag(S), 1.0) and np.allclose(S, S.T)
    rows = list(csv.DictReader(open(quick_study / "compare/results.csv")))
    assert {r["approach"] for r in rows} == {"pi-tuning", "target-only", "uniform-avg"}
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    quality = json.loads((quick_study / "transfer/predict_quality.json").read_text())
    assert set(quality) == {"fisher", "weights", "data", "random"}


def test_verify_passes_then_reports_corruption(quick_study, tmp_path, capsys):
    study = shutil.copytree(quick_study, tmp_path / "study")
    assert verify_study(study) == []
    assert main(["verify", str(study)]) == 0
    sim = study / "predict/lora/fisher/similarity.csv"
    sim.write_text(sim.read_text().replace("1.0", "0.9", 1))
    (study / "experts/lora/lfw_faces/adapter_model.safetensors").unlink()
    problems = verify_study(study, load_experts=False)
    assert "corrupt (sha256 mismatch): predict/lora/fisher/similarity.csv" in problems
    assert "missing: experts/lora/lfw_faces/adapter_model.safetensors" in problems
    assert main(["verify", str(study)]) == 1
    assert "pitune precompute --out" in capsys.readouterr().out


def test_resume_skips_verified_stages_and_redoes_broken_ones(quick_study, tmp_path, capsys):
    study = shutil.copytree(quick_study, tmp_path / "study")
    before = (study / "experts/lora/movie_sentiment/adapter_model.safetensors").read_bytes()
    (study / "transfer/transfer_matrix.csv").write_text("garbage")
    assert main(["precompute", "--quick", "--out", str(study), "--projector", "precomputed/backbone"]) == 0
    err = capsys.readouterr().err
    assert "experts: up to date (checksums verified), skipped" in err
    assert "transfer: running" in err  # its checksum failed, so it was redone (its pairs were kept)
    assert (study / "experts/lora/movie_sentiment/adapter_model.safetensors").read_bytes() == before
    assert (study / "transfer/transfer_matrix.csv").read_text().startswith("target,")
    assert verify_study(study, load_experts=False) == []


def test_same_seeds_give_the_same_similarities_and_metrics(tmp_path):
    plan = StudyPlan(tasks=["sklearn_digits", "lfw_faces", "tux_category_question"], extra_methods={},
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
    for heading in ("## Experts", "## Predict", "## π-Tuning against the baselines", "## How it was made"):
        assert heading in text
