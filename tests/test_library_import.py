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
