"""Bring your own expert library: adapters trained with plain transformers + peft (``tests/plain_peft.py``,
no pitune code on the producing side) are imported, checked as strictly as pitune's own experts, and
refused in one line each when hostile, with nothing imported half-way."""

from __future__ import annotations

import ast
import json
import shutil
import struct
from pathlib import Path

import pytest

from pitune_core.cli.main import main

TASKS = ("movie_sentiment", "amazon_sentiment", "bbc_topic")
SHOTS = 6


def _examples(task: str):
    from pitune_core.data.tasks import get_task

    spec = get_task(task)
    data = spec.load()
    idx = data.few_shot(SHOTS, seed=0)
    return [data.train.texts[i] for i in idx], [int(data.train.labels[i]) for i in idx], list(spec.verbalizers)


def _produce(base: str, out: Path, tasks=TASKS, **kw) -> Path:
    import plain_peft

    for t in tasks:
        texts, labels, words = _examples(t)
        plain_peft.train_adapter(base, texts, labels, words, str(out / t), **kw)
    return out


@pytest.fixture(scope="session")
def minilm() -> str:
    from pitune_core.model.backbone import trunk_path

    return trunk_path()


@pytest.fixture(scope="session")
def plain_adapters(tmp_path_factory, minilm) -> Path:
    """Three rank-2 LoRA adapters on the packaged MiniLM, a few steps each, by plain peft."""
    return _produce(minilm, tmp_path_factory.mktemp("plain") / "adapters", steps=4)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm) -> Path:
    """A second base: a tiny randomly initialised BERT (MiniLM's tokenizer), saved to a folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny") / "tiny-bert"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_adapters(tmp_path_factory, tiny_bert) -> Path:
    return _produce(str(tiny_bert), tmp_path_factory.mktemp("plain-tiny") / "adapters", tasks=TASKS[:2], steps=2)


@pytest.fixture
def libs(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "libraries"
    monkeypatch.setenv("PITUNE_LIBRARIES", str(root))
    return root


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def _refused(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_the_producer_uses_no_pitune_code():
    tree = ast.parse((Path(__file__).parent / "plain_peft.py").read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert modules and not any(m.split(".")[0].startswith("pitune") for m in modules), modules


def test_import_list_show_remove(plain_adapters, libs, capsys):
    from pitune_core.model.experts import read_expert_meta
    from pitune_core.model.library import open_library

    assert main(["library", "import", str(plain_adapters), "--name", "mine"]) == 0
    out = capsys.readouterr().out
    assert "library mine: 3 LoRA adapters (r=2, query, value)" in out
    lib = open_library("mine")
    assert lib.adapters == tuple(sorted(TASKS))
    assert lib.method_config["alpha"] == 4 and lib.info["adapters"][0]["alpha"] == 4
    for d in lib.expert_dirs().values():  # every imported adapter is an ordinary pitune expert
        assert read_expert_meta(d)["backbone_id"] == lib.base.backbone_id
    assert (lib.paths.graph_json("lora", "weights")).is_file()
    assert main(["library", "list"]) == 0
    assert capsys.readouterr().out.startswith("mine\t3 adapters\tr=2")
    assert main(["library", "show", "mine"]) == 0
    shown = capsys.readouterr().out
    assert all(t in shown for t in TASKS) and "neighbours (weights similarity)" in shown
    err = _refused(capsys, ["library", "import", str(plain_adapters), "--name", "mine"])
    assert "already exists" in err
    assert main(["library", "remove", "mine"]) == 0
    assert _leftovers(libs) == []


def test_imported_tensors_equal_the_files_with_alpha_folded(tmp_path, plain_adapters, libs, minilm):
    """alpha is folded into B: an adapter saved with alpha = 4r imports with pitune's 2r and B doubled,
    so ΔW = (alpha/r)·B·A is unchanged."""
    from safetensors.torch import load_file

    from pitune_core.model.library import open_library
    from pitune_core.predict.library import import_library

    src = _produce(minilm, tmp_path / "a8", tasks=TASKS[:1], steps=2, alpha=8)
    import_library(src, "folded")
    lib = open_library("folded")
    got = load_file(str(Path(lib.expert_dirs()[TASKS[0]]) / "adapter_model.safetensors"))
    raw = load_file(str(src / TASKS[0] / "adapter_model.safetensors"))
    assert set(got) == set(raw) and len(got) == 24
    for k, t in raw.items():
        assert (got[k] == (t * 2 if ".lora_B." in k else t)).all(), k


def _copy(src: Path, dst: Path, names=TASKS) -> Path:
    for n in names:
        shutil.copytree(src / n, dst / n)
    return dst


def _edit_config(folder: Path, **changes) -> None:
    p = folder / "adapter_config.json"
    cfg = json.loads(p.read_text())
    cfg.update(changes)
    p.write_text(json.dumps(cfg))


def test_hostile_libraries_refused_in_one_line_nothing_left(tmp_path, plain_adapters, tiny_adapters, libs, capsys,
                                                            minilm):
    import torch
    from safetensors.torch import load_file, save_file

    cases = {}
    # wrong base: adapters trained on the tiny BERT, imported on MiniLM
    cases["wrong base"] = (tiny_adapters, "trained on another base model")
    # mixed ranks
    d = _copy(plain_adapters, tmp_path / "mixed")
    shutil.rmtree(d / TASKS[0])
    _produce(minilm, d, tasks=TASKS[:1], steps=1, r=4, alpha=8)
    cases["mixed ranks"] = (d, "mixed ranks")
    # a huge tensor file (sparse: its size is read from the file system before any byte)
    d = _copy(plain_adapters, tmp_path / "huge")
    with open(d / TASKS[1] / "adapter_model.safetensors", "r+b") as f:
        f.truncate(65 << 20)
    cases["huge"] = (d, "over the")
    # a config naming modules the base lacks
    d = _copy(plain_adapters, tmp_path / "modules")
    _edit_config(d / TASKS[2], target_modules=["query", "q_proj"])
    cases["modules"] = (d, "q_proj")
    # a symlink out of DIR
    d = _copy(plain_adapters, tmp_path / "link")
    outside = tmp_path / "outside.safetensors"
    shutil.move(d / TASKS[0] / "adapter_model.safetensors", outside)
    (d / TASKS[0] / "adapter_model.safetensors").symlink_to(outside)
    cases["symlink"] = (d, "symbolic link out of DIR")
    # NaN in a tensor
    d = _copy(plain_adapters, tmp_path / "nan")
    t = load_file(str(d / TASKS[1] / "adapter_model.safetensors"))
    k = sorted(t)[1]
    t[k] = torch.full_like(t[k], float("nan"))
    save_file(t, str(d / TASKS[1] / "adapter_model.safetensors"))
    cases["nan"] = (d, "NaN")
    # a config field pitune does not write (DoRA changes the update)
    d = _copy(plain_adapters, tmp_path / "dora")
    _edit_config(d / TASKS[0], use_dora=True)
    cases["dora"] = (d, "use_dora")
    # a float16 adapter
    d = _copy(plain_adapters, tmp_path / "half")
    t = load_file(str(d / TASKS[2] / "adapter_model.safetensors"))
    save_file({k: v.half() for k, v in t.items()}, str(d / TASKS[2] / "adapter_model.safetensors"))
    cases["half"] = (d, "float32")
    # a header that claims more than the file holds
    d = _copy(plain_adapters, tmp_path / "trunc")
    p = d / TASKS[0] / "adapter_model.safetensors"
    p.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    cases["truncated"] = (d, "truncated")
    capsys.readouterr()
    for what, (src, needle) in cases.items():
        err = _refused(capsys, ["library", "import", str(src), "--name", "hostile"])
        assert needle in err, (what, err)
        assert _leftovers(libs) == [], what  # nothing imported half-way, no temporary folder left


def test_a_head_of_its_own_is_reported_and_ignored(tmp_path, libs, capsys, minilm):
    src = _produce(minilm, tmp_path / "head", tasks=TASKS[:1], steps=1, modules_to_save=["pooler"])
    assert main(["library", "import", str(src), "--name", "headed"]) == 0
    err = capsys.readouterr().err
    assert "its own head (pooler) is ignored" in err


def test_base_checks(tmp_path, tiny_bert, tiny_adapters, plain_adapters, libs, capsys):
    """A base is a folder, identified by config and weight hash: a second, tiny BERT works as a base, a
    missing / unsupported / changed one is refused in one line."""
    from pitune_core.model.library import open_library

    assert main(["library", "import", str(tiny_adapters), "--name", "tiny", "--base", str(tiny_bert)]) == 0
    assert open_library("tiny").base.hidden_size == 32
    # MiniLM adapters on the tiny base
    capsys.readouterr()
    assert "trained on another base model" in _refused(capsys, ["library", "import", str(plain_adapters), "--name", "x",
                                            "--base", str(tiny_bert)])
    assert "does not exist" in _refused(capsys, ["library", "import", str(plain_adapters), "--name", "x",
                                                 "--base", str(tmp_path / "nowhere")])
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
    assert "supported: " in _refused(capsys, ["library", "import", str(plain_adapters), "--name", "x",
                                              "--base", str(gpt)])
    # the same path, other weights: refused by hash, not trusted by the path string
    moved = tmp_path / "moved-tiny"
    shutil.copytree(tiny_bert, moved)
    assert main(["library", "import", str(tiny_adapters), "--name", "tiny2", "--base", str(moved)]) == 0
    import torch
    from transformers import BertModel

    m = BertModel.from_pretrained(moved)
    with torch.no_grad():
        m.embeddings.word_embeddings.weight[0, 0] += 1.0
    m.save_pretrained(moved)
    capsys.readouterr()
    with pytest.raises(ValueError, match="not the base the library was imported on"):
        open_library("tiny2")
    assert sorted(_leftovers(libs)) == ["tiny", "tiny2"]


# ----------------------------------------------------------------------------- ranking and π-Tuning on a library

def _user_task(tmp_path, name="my_reviews", n=12) -> str:
    """A user task (``pitune task add``) from examples of a suite task none of the adapters saw."""
    import csv

    from pitune_core.data.tasks import get_task

    spec = get_task("rt_polarity")
    data = spec.load()
    rows = [(data.train.texts[i], spec.labels[int(data.train.labels[i])]) for i in data.few_shot(n, seed=1)]
    f = tmp_path / "reviews.csv"
    with open(f, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    assert main(["task", "add", name, "--text", str(f)]) == 0
    return name


def test_top_k_and_transfer_for_a_user_task(tmp_path, plain_adapters, libs, store, capsys, minilm):
    """A user task ranked against the imported adapters, then π-Tuning over them; the merged result is
    an ordinary peft adapter of the base: plain ``PeftModel.from_pretrained`` loads it and scores the
    same as pitune does."""
    import torch
    import torch.nn.functional as F
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    from pitune_core.data.tasks import get_task
    from pitune_core.model.experts import load_expert, predict, prepare_task
    from pitune_core.model.library import open_library, using_base
    from pitune_core.tune.library import library_backbone

    assert main(["library", "import", str(plain_adapters), "--name", "mine"]) == 0
    target = _user_task(tmp_path)
    capsys.readouterr()
    assert main(["top-k", target, "--library", "mine", "--shots", "4", "--k", "3"]) == 0  # its time: bench/bench_library.py
    rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert sorted(n for n, _ in rows) == sorted(TASKS)
    scores = [float(s) for _, s in rows]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)

    out = tmp_path / "run"
    assert main(["transfer", target, "--library", "mine", "--shots", "4", "--k", "2", "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["sources"] == [n for n, _ in rows[:2]] and len(res["final_weights"]) == 3  # + the own expert
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["library"] == "mine" and cfg["selection"] == "shots"

    lib = open_library("mine")
    spec = get_task(target)
    with using_base(lib.base):
        bb = library_backbone(lib)
        model, _ = load_expert(out / "expert", bb)
        _, tensors = prepare_task(spec, bb)
        test = tensors["test"]
        ours = predict(bb, model, test, list(spec.verbalizers))
        our_emb = bb.encode_texts(test.texts[:8], model)
    plain = PeftModel.from_pretrained(AutoModel.from_pretrained(minilm), str(out / "expert")).eval()
    tok = AutoTokenizer.from_pretrained(minilm)

    @torch.no_grad()
    def embed(texts):
        t = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        h = plain(**t).last_hidden_state
        m = t["attention_mask"].unsqueeze(-1).float()
        return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    torch.testing.assert_close(embed(test.texts[:8]), our_emb, atol=1e-5, rtol=1e-4)
    theirs = (embed(test.texts) @ embed(list(spec.verbalizers)).T).argmax(-1).numpy()
    assert (theirs == ours).mean() == 1.0
    assert res["test"]["accuracy"] == pytest.approx(float((ours == test.labels.numpy()).mean()))


def test_pi_tuning_on_imported_equals_pitune_trained(tmp_path, backbone, libs, minilm):
    """Same weights in, same scores out: two experts trained by pitune, exported as plain peft adapters
    (loaded into a plain AutoModel, saved with save_pretrained) and imported, interpolate and tune to the
    same scores and the same combined adapter as the originals."""
    import torch
    from peft import PeftModel
    from transformers import AutoModel

    from pitune_core.model.experts import TrainConfig, train_expert
    from pitune_core.model.library import open_library, using_base
    from pitune_core.predict.library import import_library
    from pitune_core.tune.baselines import Sources, interpolate_and_tune
    from pitune_core.tune.library import library_backbone, library_sources

    names = ["movie_sentiment", "bbc_topic"]
    own, plain = {}, tmp_path / "exported"
    for n in names:
        own[n] = str(train_expert(n, "lora", backbone, shots=4, out=tmp_path / "pitune" / n,
                                  train_config=TrainConfig(min_steps=3, max_steps=3),
                                  method_overrides={"r": 2, "alpha": 4, "target_modules": ("query", "value")},
                                  evaluate_zero_shot=False, evaluate_val=False, eval_limit=8).path)
        PeftModel.from_pretrained(AutoModel.from_pretrained(minilm), own[n]).save_pretrained(str(plain / n))
    import_library(plain, "twins")
    lib = open_library("twins")
    mc = lib.method_overrides()
    pairs = [(n, 0.0) for n in names]
    a, ma, _ = interpolate_and_tune("rt_polarity", pairs, Sources(own, names, torch.eye(2).numpy(), method_config=mc),
                                    backbone, 4, 0, steps=3)
    with using_base(lib.base):
        b, mb, _ = interpolate_and_tune("rt_polarity", pairs, library_sources(lib), library_backbone(lib), 4, 0, steps=3)
    assert ma["test"] == mb["test"] and ma["val"] == mb["val"] and ma["final_loss"] == pytest.approx(mb["final_loss"])
    sa, sb = a.combined_state(), b.combined_state()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=1e-6, rtol=1e-5)


def test_a_library_on_another_base_ranks_and_tunes(tmp_path, tiny_bert, tiny_adapters, libs, capsys):
    """Nothing is MiniLM-specific: a library on the tiny BERT ranks and π-tunes; the run's expert loads
    on that base in plain peft."""
    from peft import PeftModel
    from transformers import AutoModel

    assert main(["library", "import", str(tiny_adapters), "--name", "tiny", "--base", str(tiny_bert)]) == 0
    capsys.readouterr()
    assert main(["top-k", "rt_polarity", "--library", "tiny", "--shots", "2", "--k", "2"]) == 0
    assert sorted(line.split("\t")[0] for line in capsys.readouterr().out.split("\n") if line) == sorted(TASKS[:2])
    out = tmp_path / "run"
    assert main(["transfer", "rt_polarity", "--library", "tiny", "--shots", "2", "--k", "1", "--out", str(out)]) == 0
    m = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_bert), str(out / "expert"))
    assert m.peft_config["default"].r == 4  # rank 2 x (one source + the own expert)
    # recorded in the run registry (the dashboard's Runs tab lists it) when no --out is given
    from pitune_core.runs.registry import SUCCEEDED, RunRegistry

    db = tmp_path / "registry.sqlite"
    assert main(["transfer", "rt_polarity", "--library", "tiny", "--shots", "2", "--k", "1", "--db", str(db)]) == 0
    [rec] = RunRegistry(db).list_runs()
    assert rec.kind == "library-transfer" and rec.status == SUCCEEDED and rec.config["library"] == "tiny"
    assert (Path(rec.run_dir) / "expert" / "adapter_model.safetensors").is_file()


def test_the_baselines_run_on_a_library(tmp_path, tiny_bert, tiny_adapters, libs, capsys):
    """Every baseline that takes a library (best-single, the peft merges, LoraHub, Arrow) runs on an imported
    one, here on the tiny base."""
    import csv

    assert main(["library", "import", str(tiny_adapters), "--name", "tiny", "--base", str(tiny_bert)]) == 0
    out = tmp_path / "compare"
    approaches = ["pi-tuning", "best-single", "peft-linear", "peft-ties", "peft-dare", "lorahub", "arrow"]
    assert main(["compare", "rt_polarity", "--library", "tiny", "--k", "1", "--shots", "2", "--seeds", "0",
                 "--out", str(out), "--approaches", *approaches]) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["approach"] for r in rows] == approaches
    assert all(0 <= float(r["accuracy"]) <= 1 for r in rows)


def test_samples_give_fisher_and_the_quality_gate(tmp_path, plain_adapters, libs, capsys, minilm):
    """With a small sample per adapter (``--samples DIR``, one CSV each), the library gets Fisher
    embeddings and graph, and an adapter that learned nothing (B = 0) is gated out of the sources, as in
    a study; ranking then goes by Fisher, as on the built-in library."""
    import csv

    from pitune_core.data.tasks import get_task
    from pitune_core.model.library import open_library
    from pitune_core.predict.embeddings import load_embeddings
    from pitune_core.tune.library import library_sources, resolve_embedding

    src = _copy(plain_adapters, tmp_path / "adapters")
    _produce(minilm, src, tasks=["rt_subjectivity"], steps=0)  # an adapter that never trained
    samples = tmp_path / "samples"
    samples.mkdir()
    for t in (*TASKS, "rt_subjectivity"):
        spec = get_task(t)
        data = spec.load()
        with open(samples / f"{t}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows((data.val.texts[i], spec.verbalizers[int(data.val.labels[i])])
                        for i in data.few_shot(5, seed=3, split="val"))
    assert main(["library", "import", str(src), "--name", "sampled", "--samples", str(samples)]) == 0
    out = capsys.readouterr().out
    assert "rt_subjectivity" in out and "neighbours (fisher similarity)" in out
    lib = open_library("sampled")
    emb = load_embeddings(lib.paths.embeddings_file("lora", "fisher"))
    assert emb.names == list(lib.adapters) and lib.paths.graph_json("lora", "fisher").is_file()
    assert resolve_embedding(lib, None) == "fisher"
    sources = library_sources(lib, "my_target", "fisher")
    assert "rt_subjectivity" in sources.gated and "rt_subjectivity" not in sources.expert_dirs
    capsys.readouterr()
    assert main(["top-k", "rt_polarity", "--library", "sampled", "--shots", "2", "--k", "5"]) == 0
    got = capsys.readouterr()
    offered = sorted(line.split("\t")[0] for line in got.out.split("\n") if line)
    assert offered == sorted(sources.expert_dirs) and "rt_subjectivity" not in offered  # gated ones left out
    assert "ranked by fisher similarity" in got.err and "pitune: rt_subjectivity " in got.err
    (samples / "stray.csv").write_text("text,label\na,b\nc,d\n")
    capsys.readouterr()
    assert "names no adapter" in _refused(capsys, ["library", "import", str(src), "--name", "again",
                                                   "--samples", str(samples)])


def test_dashboard_library_selector_and_launch(tmp_path, tiny_bert, tiny_adapters, libs, monkeypatch):
    """The sidebar's selector opens a library's own page (graph, neighbours, adapters) and its launch
    form queues a ``library-transfer`` run in the registry (the scheduler is not started here)."""
    import sys

    from streamlit.testing.v1 import AppTest

    from pitune_core.runs import executor
    from pitune_core.runs.registry import RunRegistry

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_study import make_synthetic_study

    monkeypatch.setenv("PITUNE_STUDY", str(make_synthetic_study(tmp_path / "study")))
    db = tmp_path / "registry.sqlite"
    monkeypatch.setenv("PITUNE_RUNS_DB", str(db))
    calls = []
    monkeypatch.setattr(executor, "ensure_scheduler", lambda d, *a, **kw: calls.append(str(d)) or 4242)
    assert main(["library", "import", str(tiny_adapters), "--name", "tiny", "--base", str(tiny_bert)]) == 0
    app = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
    at = AppTest.from_file(app, default_timeout=120)
    at.session_state["library_view"] = "tiny"  # as the sidebar's selector sets it (the study's page is not drawn)
    at.run()
    assert not at.exception, at.exception
    assert at.sidebar.selectbox(key="library_view").options == ["the study's experts", "library: tiny"]
    assert at.title[0].value == "Expert library · tiny"
    assert "rt_polarity" in at.selectbox(key="lib_target").options
    at.selectbox(key="lib_target").set_value("rt_polarity")
    at.selectbox(key="lib_shots").set_value(2)
    at.number_input(key="lib_k").set_value(1)
    at.button(key="lib_launch").click().run()
    assert not at.exception, at.exception
    [rec] = RunRegistry(db).list_runs()
    assert rec.kind == "library-transfer" and rec.config["library"] == "tiny" and rec.config["k"] == 1
    assert calls == [str(db)]


def test_weight_and_arrow_similarities_equal_their_definitions():
    """ΔW cosine from the r x r products equals the cosine of the formed ΔW = B·A (mean over positions);
    Arrow's prototype equals the top right singular vector of the formed ΔW (up to sign)."""
    import numpy as np

    from pitune_core.predict.library import arrow_prototypes, arrow_similarity, weight_similarity

    rng = np.random.default_rng(0)
    positions = ["l0.q", "l0.v", "l1.q"]
    factors = [{p: (rng.normal(size=(3, 7)), rng.normal(size=(5, 3))) for p in positions} for _ in range(4)]
    factors[3] = {p: (a, np.zeros_like(b)) for p, (a, b) in factors[3].items()}  # an adapter that learned nothing

    def cos(x, y):
        n = np.linalg.norm(x) * np.linalg.norm(y)
        return float((x * y).sum() / n) if n > 0 else 0.0

    want = np.array([[np.mean([cos(f[p][1] @ f[p][0], g[p][1] @ g[p][0]) for p in positions]) for g in factors]
                     for f in factors])
    np.fill_diagonal(want, 1.0)
    np.testing.assert_allclose(weight_similarity(factors), want, atol=1e-12)
    a = np.stack([f["l0.q"][0] for f in factors[:3]])
    b = np.stack([f["l0.q"][1] for f in factors[:3]])
    for i, v in enumerate(arrow_prototypes(a, b)):
        top = np.linalg.svd(b[i] @ a[i])[2][0]
        assert abs(abs(float(v @ top)) - 1.0) < 1e-9
    S = arrow_similarity(factors)
    assert np.allclose(S, S.T) and np.allclose(np.diag(S), 1.0) and (S[3, :3] == 0).all()
