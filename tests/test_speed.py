"""Issue 15's faster paths compute what the slower ones did: packed encoding vs padded encoding,
the training loop and prediction on either path, and batched per-example Fisher gradients vs the
one-example-at-a-time loop. (Speed itself is measured in bench/, never in a test.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pitune_core.data.tasks import get_task
from pitune_core.model.backbone import Inputs, UnifiedBackbone, packable
from pitune_core.model.experts import (
    TrainConfig,
    attach,
    get_method,
    predict,
    prepare_task,
    train_loop,
)
from pitune_core.predict.embeddings import (
    adapter_parameters,
    fisher_information,
    per_sample_grads,
)

TASKS = ("movie_sentiment", "sklearn_digits", "emoji_group_question")  # language, vision, vision-language


def expert(bb: UnifiedBackbone, method: str, seed: int = 0):
    """A fresh adapter moved away from its (often zero) initialisation, so every path matters."""
    torch.manual_seed(seed)
    model = attach(bb.fresh_trunk(), get_method(method)).to(bb.device).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def bb():
    """A private backbone: the float64 checks below convert it."""
    return UnifiedBackbone.load()


@pytest.fixture(scope="module")
def tasks(bb):
    return {t: prepare_task(get_task(t), bb)[1] for t in TASKS}


def padded(bb, fn):
    bb.packing = False
    try:
        return fn()
    finally:
        bb.packing = True


@pytest.mark.parametrize("method", ["lora", "ia3"])
@pytest.mark.parametrize("task", TASKS)
def test_packed_encoding_equals_padded(bb, tasks, task, method):
    spec = get_task(task)
    model = expert(bb, method)
    assert packable(model)
    inputs, _ = tasks[task]["train"].batch(range(12))
    labels = Inputs(list(spec.verbalizers), None, len(spec.verbalizers))
    with torch.no_grad():
        x, lab = bb.encode_many([inputs, labels], model)
        x0, lab0 = bb.encode_padded(inputs, model), bb.encode_padded(labels, model)
    assert x.shape == x0.shape and lab.shape == lab0.shape
    torch.testing.assert_close(x, x0, rtol=0, atol=2e-5)
    torch.testing.assert_close(lab, lab0, rtol=0, atol=2e-5)


def test_prompt_tuning_runs_padded(bb, tasks):
    model = expert(bb, "prompt")
    assert not packable(model)  # its virtual tokens are prepended per row
    inputs, _ = tasks["movie_sentiment"]["train"].batch(range(4))
    with torch.no_grad():
        torch.testing.assert_close(bb.encode(inputs, model), bb.encode_padded(inputs, model), rtol=0, atol=0)


@pytest.mark.parametrize("task", ["movie_sentiment", "sklearn_digits"])
def test_training_loop_packed_follows_the_padded_loop(bb, tasks, task):
    spec = get_task(task)
    train = tasks[task]["train"].subset(range(40))
    cfg = TrainConfig(min_steps=6, max_steps=6, batch_size=16, seed=3)
    runs = {}
    for name in ("packed", "padded"):
        model = expert(bb, "lora", seed=1)
        params = [p for p in model.parameters() if p.requires_grad]
        fn = lambda: train_loop(bb, model, train, list(spec.verbalizers), params, 1e-3, cfg)
        losses = fn() if name == "packed" else padded(bb, fn)
        runs[name] = (losses, [p.detach().clone() for p in params])
    assert len(runs["packed"][0]) == 6
    np.testing.assert_allclose(runs["packed"][0], runs["padded"][0], rtol=1e-4)
    # Adam divides by the gradient's running scale, so a coordinate whose gradient is ~0 can turn
    # float rounding into up to one step (lr); everything else must agree closely
    diff = torch.cat([(a - b).abs().flatten() for a, b in zip(runs["packed"][1], runs["padded"][1])])
    assert diff.max() <= 1e-3 and (diff > 1e-5).float().mean() < 0.01


def test_training_still_stops_on_divergence(bb, tasks):
    spec = get_task("movie_sentiment")
    model = expert(bb, "lora")
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        params[0].fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="diverged at step 0"):
        train_loop(bb, model, tasks["movie_sentiment"]["train"], list(spec.verbalizers), params, 1e-3,
                   TrainConfig(min_steps=3, max_steps=3))


@pytest.mark.parametrize("task", TASKS)
def test_prediction_in_length_order_keeps_the_data_order(bb, tasks, task):
    spec = get_task(task)
    model = expert(bb, "lora")
    data = tasks[task]["test"].subset(range(90))
    fast = predict(bb, model, data, list(spec.verbalizers), batch_size=32)
    # the reference: every example alone, padded, in data order
    ref = padded(bb, lambda: np.array([
        int(bb.logits(data.batch([i])[0], bb.encode_texts(list(spec.verbalizers), model), model).argmax())
        for i in range(len(data))]))
    np.testing.assert_array_equal(fast, ref)


@pytest.mark.parametrize("method,task", [("lora", "movie_sentiment"), ("lora", "sklearn_digits"),
                                         ("ia3", "emoji_group_question"), ("prompt", "movie_sentiment")])
def test_batched_fisher_equals_the_loop(bb, tasks, method, task):
    """vmap-over-grad per-example gradients give the loop's Fisher: to 1e-6 relative with the maths
    in float64 (no rounding to hide a difference), and to float32 rounding as run in studies."""
    spec = get_task(task)
    model = expert(bb, method)
    data = tasks[task]["train"].subset(range(10))
    verbal = list(spec.verbalizers)

    def max_rel(a, b):
        return max(float(np.abs(a[k] - b[k]).max() / np.abs(a[k]).max()) for k in a if k not in idle)

    loop32 = fisher_information(model, bb, data, verbal, batched=False)
    batched32 = fisher_information(model, bb, data, verbal, batched=True, chunk_size=4)
    assert set(loop32) == set(batched32) == set(adapter_parameters(model))
    # a text input never reaches the image projector: its LoRA has no gradient, in both ways alike
    idle = {k for k in loop32 if "pitune_projector" in k and data.visual is None}
    assert all(not np.any(loop32[k]) and not np.any(batched32[k]) for k in idle)
    assert all(np.abs(v).max() > 0 for k, v in loop32.items() if k not in idle)
    assert method != "lora" or any("pitune_projector" in k for k in loop32)  # the projector's LoRA is measured
    assert max_rel(loop32, batched32) < 1e-4
    model.double()
    bb.double()
    try:
        loop64 = fisher_information(model, bb, data, verbal, batched=False)
        batched64 = fisher_information(model, bb, data, verbal, batched=True, chunk_size=4)
    finally:
        model.float()
        bb.float()
    assert max_rel(loop64, batched64) < 1e-6


def test_per_sample_grads_are_per_example(bb, tasks):
    """Each row is that example's own gradient (order kept), not a batch mean."""
    spec = get_task("sklearn_digits")
    model = expert(bb, "lora")
    data = tasks["sklearn_digits"]["train"].subset(range(5))
    grads = per_sample_grads(model, bb, data, list(spec.verbalizers), chunk_size=2)
    params = adapter_parameters(model)
    inputs, y = data.batch([3])
    loss = torch.nn.functional.cross_entropy(
        bb.logits(inputs, bb.encode_texts(list(spec.verbalizers), model), model), y)
    own = torch.autograd.grad(loss, list(params.values()))
    for k, g in zip(params, own):
        assert grads[k].shape == (5, *g.shape)
        torch.testing.assert_close(grads[k][3], g, rtol=1e-3, atol=1e-6)


def test_a_few_shot_runs_fisher_is_the_batched_one(bb, tasks, monkeypatch):
    """The protocol's target side (baselines.fisher_on) uses the batched Fisher, on the seeded sample,
    and gives the loop's values (the loop made the study's first runs)."""
    from pitune_core.predict import embeddings
    from pitune_core.tune.baselines import fisher_on

    spec = get_task("movie_sentiment")
    model = expert(bb, "lora")
    train = tasks["movie_sentiment"]["train"]
    calls = []
    real = embeddings.fisher_information
    monkeypatch.setattr(embeddings, "fisher_information",
                        lambda *a, **kw: calls.append(kw.get("batched", True)) or real(*a, **kw))
    fast = fisher_on(model, bb, spec, train, 12, seed=3)
    loop = fisher_on(model, bb, spec, train, 12, seed=3, batched=False)
    assert calls == [True, False]
    assert set(fast) == set(loop) == set(adapter_parameters(model))
    idle = {k for k in loop if "pitune_projector" in k}  # a text task never reaches the image projector
    assert idle and all(not np.any(loop[k]) and not np.any(fast[k]) for k in idle)
    assert max(float(np.abs(fast[k] - loop[k]).max() / np.abs(loop[k]).max()) for k in loop if k not in idle) < 1e-4
    other = fisher_on(model, bb, spec, train, 12, seed=4)  # another seed: another sample of the data
    assert any(not np.allclose(other[k], fast[k]) for k in fast)


def test_a_transfer_pair_skips_the_validation_pass_and_scores_the_same(bb, tasks):
    """A transfer pair keeps the test score only, so it no longer scores val: same test metric, no val."""
    from pitune_core.model.experts import TrainConfig, train_expert

    cfg = TrainConfig(min_steps=3, max_steps=3, batch_size=8)
    kw = dict(shots=2, seed=1, train_config=cfg, evaluate_zero_shot=False, eval_limit=40)
    both = train_expert("sklearn_digits", "lora", bb, **kw).meta["metrics"]
    test_only = train_expert("sklearn_digits", "lora", bb, evaluate_val=False, **kw).meta["metrics"]
    assert "val" in both and "val" not in test_only
    assert test_only["test"] == both["test"]
