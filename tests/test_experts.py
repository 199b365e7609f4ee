"""Real (short) expert training on the frozen backbone, save/load through peft, bad input."""

import json

import numpy as np
import pytest

from pitune_core.cli.main import main
from pitune_core.model.experts import (ExpertError, evaluate_expert, load_expert, predict, prepare_task, read_expert_meta,
                                 train_expert)
from pitune_core.data.tasks import TaskDataError, get_task


@pytest.fixture(scope="module")
def lora_expert(backbone, short_training, tmp_path_factory):
    out = tmp_path_factory.mktemp("experts") / "movie"
    res = train_expert("movie_sentiment", "lora", backbone, seed=0, out=out, train_config=short_training)
    return out, res


def test_lora_expert_trains_and_saves_in_peft_format(lora_expert):
    out, res = lora_expert
    assert {p.name for p in out.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "pitune_expert.json"}
    meta = json.loads((out / "pitune_expert.json").read_text())
    assert meta["task"] == "movie_sentiment" and meta["method"] == "lora" and meta["seed"] == 0
    assert meta["num_train"] > 0 and meta["num_test"] > 0 and meta["steps"] == 30
    # 30 real steps of LoRA move the model above its own zero-shot score on the test split
    assert meta["metrics"]["test"]["accuracy"] > meta["metrics"]["zero_shot_test"]["accuracy"]


def test_expert_reloads_with_plain_peft_and_predicts_the_same(lora_expert, backbone):
    out, res = lora_expert
    from peft import PeftModel

    spec = get_task("movie_sentiment")
    _, tensors = prepare_task(spec, backbone)
    before = predict(backbone, res.model, tensors["test"], list(spec.verbalizers))
    plain = PeftModel.from_pretrained(backbone.fresh_trunk(), str(out))  # anyone with peft
    after = predict(backbone, plain, tensors["test"], list(spec.verbalizers))
    np.testing.assert_array_equal(before, after)
    assert evaluate_expert(out, backbone)["accuracy"] == res.meta["metrics"]["test"]["accuracy"]


@pytest.mark.parametrize("method", ["prompt", "ia3"])
def test_other_methods_train_and_reload(method, backbone, tmp_path):
    from pitune_core.model.experts import TrainConfig

    res = train_expert("sklearn_digits", method, backbone, out=tmp_path / method,
                       train_config=TrainConfig(min_steps=10, max_steps=10))
    model, meta = load_expert(tmp_path / method, backbone)
    assert meta["method"] == method
    spec = get_task("sklearn_digits")
    _, tensors = prepare_task(spec, backbone)
    np.testing.assert_array_equal(predict(backbone, res.model, tensors["val"], list(spec.verbalizers)),
                                  predict(backbone, model, tensors["val"], list(spec.verbalizers)))


def test_unknown_method_and_too_many_shots_fail_before_training(backbone, tmp_path):
    with pytest.raises(ExpertError, match="unknown expert method 'bitfit'"):
        train_expert("movie_sentiment", "bitfit", backbone, out=tmp_path / "x")
    with pytest.raises(TaskDataError, match="larger than the data"):
        train_expert("textures", "lora", backbone, shots=10_000, out=tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_missing_files_are_reported(lora_expert, tmp_path):
    out, _ = lora_expert
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((out / "adapter_config.json").read_text())
    with pytest.raises(ExpertError, match="missing adapter_model.safetensors, pitune_expert.json"):
        read_expert_meta(broken)
    with pytest.raises(ExpertError, match="does not exist"):
        read_expert_meta(tmp_path / "nowhere")


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_expert_of_another_backbone_is_refused(lora_expert, backbone, tmp_path):
    other = _copy(lora_expert[0], tmp_path / "other")
    meta = json.loads((other / "pitune_expert.json").read_text())
    meta["backbone_id"] = "minilm-l6+effnet-lite0/0000000000000000"
    (other / "pitune_expert.json").write_text(json.dumps(meta))
    with pytest.raises(ExpertError, match="trained on backbone"):
        load_expert(other, backbone)


def test_corrupted_safetensors_is_detected(lora_expert, tmp_path):
    bad = _copy(lora_expert[0], tmp_path / "bad")
    data = (bad / "adapter_model.safetensors").read_bytes()
    (bad / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExpertError, match="corrupted or truncated"):
        read_expert_meta(bad)


def test_nan_weights_are_detected(lora_expert, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = _copy(lora_expert[0], tmp_path / "nan")
    state = load_file(str(bad / "adapter_model.safetensors"))
    key = next(iter(state))
    state[key][0, 0] = float("nan")
    save_file(state, str(bad / "adapter_model.safetensors"))
    with pytest.raises(ExpertError, match="NaN/inf"):
        read_expert_meta(bad)


def test_failed_training_leaves_no_expert_directory(backbone, tmp_path):
    def explode(progress):
        if progress.get("step") == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train_expert("movie_sentiment", "lora", backbone, out=tmp_path / "half", on_step=explode)
    assert not (tmp_path / "half").exists()
    assert list(tmp_path.iterdir()) == []


def test_cli_evaluate_reports_missing_expert(capsys, tmp_path):
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_configured_lora_dropout_is_applied_while_training_and_only_then(backbone):
    """The trunk trains in eval mode (its own dropout off), which also switched off the adapter's
    ``lora_dropout``: a LoRA expert with dropout 0.5 trained to the very same weights as one with 0
    (seen on opencv_digits, issue 27). The adapter's dropout now acts while training, seeded, and is off
    again for evaluation."""
    import torch

    from pitune_core.model.experts import TrainConfig, adapter_dropout

    cfg = TrainConfig(min_steps=4, max_steps=4)

    def lora_weights(dropout):
        res = train_expert("sklearn_digits", "lora", backbone, out=None, train_config=cfg, shots=4,
                           method_overrides={"dropout": dropout}, evaluate_zero_shot=False, evaluate_val=False)
        return res.model, {n: p.detach().clone() for n, p in res.model.named_parameters() if "lora_" in n}

    _, plain = lora_weights(0.0)
    model, dropped = lora_weights(0.5)
    _, again = lora_weights(0.5)
    assert any(not torch.equal(plain[n], dropped[n]) for n in plain)  # the dropout changed training
    assert all(torch.equal(dropped[n], again[n]) for n in dropped)  # and stays deterministic for a seed
    drops = [m for n, m in model.named_modules() if n.endswith("lora_dropout.default")]
    assert drops and not any(m.training for m in drops)  # off after training: evaluation is deterministic
    with adapter_dropout(model) as active:
        assert active and all(m.training for m in active)
        assert not any(m.training for n, m in model.named_modules() if "lora_" not in n and n)
    assert not any(m.training for m in model.modules())
