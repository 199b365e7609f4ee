"""Interpolation in parameter space: exactness of the one-adapter trick, export, bad input."""

import json

import numpy as np
import pytest
import torch

from pitune_core.model.experts import EXPERT_FORMAT, attach, get_method, load_expert, predict, prepare_task, save_expert
from pitune_core.tune.interpolation import InterpolatedExperts, InterpolationError, parse_weights
from pitune_core.data.tasks import get_task


def random_expert(backbone, method, path, seed, task="sklearn_digits"):
    """A peft expert with random (non-zero) parameters, saved in pitune's format."""
    torch.manual_seed(seed)
    model = attach(backbone.fresh_trunk(), get_method(method))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.05) if "ia3" not in n else p.uniform_(0.8, 1.2)
    from dataclasses import asdict

    meta = {"format": EXPERT_FORMAT, "task": task, "modality": "vision", "method": method,
            "method_config": asdict(get_method(method)), "seed": seed, "backbone_id": backbone.backbone_id,
            "metrics": {}}
    save_expert(model, path, meta)
    return path


@pytest.fixture(scope="module")
def lora_experts(backbone, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    return [random_expert(backbone, "lora", root / f"e{i}", seed=i) for i in range(3)]


def _delta(model, layer=0, module="query"):
    """Dense weight update of one LoRA-adapted linear layer."""
    lin = dict(model.named_modules())[f"base_model.model.encoder.layer.{layer}.attention.self.{module}"]
    return lin.get_delta_weight("default")


def test_combined_lora_equals_weighted_sum_of_updates(backbone, lora_experts):
    w = [0.5, 0.3, 0.2]
    interp = InterpolatedExperts(backbone, lora_experts, weights=w)
    combined = _delta(interp.bake())
    expected = sum(wi * _delta(load_expert(d, backbone)[0]) for wi, d in zip(w, lora_experts))
    torch.testing.assert_close(combined, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(interp.weights().detach().cpu().numpy(), w, rtol=1e-6)


def test_single_source_reproduces_the_expert(backbone, lora_experts):
    spec = get_task("sklearn_digits")
    _, tensors = prepare_task(spec, backbone)
    interp = InterpolatedExperts(backbone, lora_experts[:1])
    model, _ = load_expert(lora_experts[0], backbone)
    a = backbone.encode(tensors["val"].batch(range(8))[0], interp.trunk())
    b = backbone.encode(tensors["val"].batch(range(8))[0], model)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gradients_reach_weights_and_experts(backbone, lora_experts):
    spec = get_task("sklearn_digits")
    _, tensors = prepare_task(spec, backbone)
    interp = InterpolatedExperts(backbone, lora_experts)
    inputs, y = tensors["train"].batch(range(4))
    labels = backbone.encode_texts(list(spec.verbalizers), interp.trunk())
    loss = torch.nn.functional.cross_entropy(backbone.logits(inputs, labels, interp.trunk()), y.to(backbone.device))
    loss.backward()
    assert interp.logits.grad is not None and interp.logits.grad.abs().sum() > 0
    assert all(p.grad is not None for p in interp.sources)


def test_weights_only_mode_freezes_experts(backbone, lora_experts):
    interp = InterpolatedExperts(backbone, lora_experts, train_experts=False)
    assert interp.trainable_parameters() == [interp.logits]


def test_merged_expert_loads_with_plain_peft(backbone, lora_experts, tmp_path):
    from peft import PeftModel

    spec = get_task("sklearn_digits")
    _, tensors = prepare_task(spec, backbone)
    interp = InterpolatedExperts(backbone, lora_experts, weights=[0.2, 0.2, 0.6])
    expected = predict(backbone, interp.trunk(), tensors["val"], list(spec.verbalizers))
    out = interp.save_merged(tmp_path / "merged", {"task": "sklearn_digits", "modality": "vision", "seed": 0,
                                                   "metrics": {}})
    plain = PeftModel.from_pretrained(backbone.fresh_trunk(), str(out))
    np.testing.assert_array_equal(predict(backbone, plain, tensors["val"], list(spec.verbalizers)), expected)
    meta = json.loads((out / "pitune_expert.json").read_text())
    assert meta["interpolation"]["sources"] == ["sklearn_digits"] * 3
    assert meta["interpolation"]["weights"] == pytest.approx([0.2, 0.2, 0.6])


@pytest.mark.parametrize("method", ["prompt", "ia3"])
def test_prompt_and_ia3_combine_by_weighted_sum(backbone, method, tmp_path):
    dirs = [random_expert(backbone, method, tmp_path / f"{method}{i}", seed=10 + i) for i in range(2)]
    interp = InterpolatedExperts(backbone, dirs, weights=[0.25, 0.75])
    state = interp.combined_state()
    singles = [dict(load_expert(d, backbone, trainable=True)[0].named_parameters()) for d in dirs]
    for name, value in state.items():
        torch.testing.assert_close(value, 0.25 * singles[0][name] + 0.75 * singles[1][name])


def test_bad_weights_are_rejected_before_training():
    with pytest.raises(InterpolationError, match="non-negative"):
        parse_weights("0.5,-0.1,0.6", 3)
    with pytest.raises(InterpolationError, match="2 weights for 3 sources"):
        parse_weights("0.5,0.5", 3)
    with pytest.raises(InterpolationError, match="comma-separated numbers"):
        parse_weights("a,b,c", 3)
    with pytest.raises(InterpolationError, match="finite"):
        parse_weights("nan,1,1", 3)
    assert parse_weights("1,1,2", 3) == [1.0, 1.0, 2.0]


def test_mixed_methods_and_empty_sources_are_refused(backbone, lora_experts, tmp_path):
    ia3 = random_expert(backbone, "ia3", tmp_path / "ia3", seed=5)
    with pytest.raises(InterpolationError, match="different expert methods"):
        InterpolatedExperts(backbone, [lora_experts[0], ia3])
    with pytest.raises(InterpolationError, match="k must be at least 1"):
        InterpolatedExperts(backbone, [])


def test_weights_are_per_layer_and_adapter_position(backbone, lora_experts):
    """The paper's recipe: one softmax over the k experts per adapted module (uniform start)."""
    interp = InterpolatedExperts(backbone, lora_experts)
    assert interp.granularity == "position"
    assert len(interp.positions) == 6 * 2 + 2  # 6 layers x (query, value), and the projector's two layers
    assert {"base_model.model.pitune_projector.fc1", "base_model.model.pitune_projector.fc2"} <= set(interp.positions)
    np.testing.assert_allclose(interp.position_weights().detach().cpu().numpy(), 1 / 3, rtol=1e-6)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        interp.logits.copy_(torch.tensor(rng.normal(size=interp.logits.shape), dtype=torch.float32))
    W = interp.position_weights().detach()
    model = interp.bake()
    singles = [load_expert(d, backbone)[0] for d in lora_experts]
    for layer, module in ((0, "query"), (3, "value"), (5, "query")):
        pos = interp.positions.index(f"base_model.model.encoder.layer.{layer}.attention.self.{module}")
        expected = sum(W[pos, i] * _delta(s, layer, module) for i, s in enumerate(singles))
        torch.testing.assert_close(_delta(model, layer, module), expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(W[0], W[1])  # the rows really differ, so the check above is not vacuous


def test_global_granularity_is_one_weight_vector(backbone, lora_experts):
    interp = InterpolatedExperts(backbone, lora_experts, weights=[0.5, 0.3, 0.2], granularity="global")
    assert interp.logits.shape == (1, 3)
    combined = _delta(interp.bake(), 2, "value")
    expected = sum(w * _delta(load_expert(d, backbone)[0], 2, "value") for w, d in zip([0.5, 0.3, 0.2], lora_experts))
    torch.testing.assert_close(combined, expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(InterpolationError, match="granularity"):
        InterpolatedExperts(backbone, lora_experts, granularity="per-token")


@pytest.mark.parametrize("method,positions", [("prompt", 1), ("ia3", 6 * 4)])  # key, value, 2x output.dense
def test_prompt_and_ia3_positions_take_their_own_weights(backbone, method, positions, tmp_path):
    dirs = [random_expert(backbone, method, tmp_path / f"{method}{i}", seed=20 + i) for i in range(2)]
    interp = InterpolatedExperts(backbone, dirs)
    assert len(interp.positions) == positions
    with torch.no_grad():
        interp.logits.copy_(torch.linspace(-1, 1, positions * 2).reshape(positions, 2))
    W = interp.position_weights().detach()
    singles = [dict(load_expert(d, backbone, trainable=True)[0].named_parameters()) for d in dirs]
    for name, value in interp.combined_state().items():
        from pitune_core.tune.interpolation import adapter_position

        w = W[interp.positions.index(adapter_position(name))]
        torch.testing.assert_close(value, w[0] * singles[0][name] + w[1] * singles[1][name])
