"""Task embeddings: Fisher, weights, data; storage; refusal of incomparable or broken inputs."""

import shutil

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from pitune_core.predict.embeddings import (EmbeddingError, embed_experts, fisher_embedding, load_embeddings,
                                    random_embedding, save_embeddings)
from pitune_core.predict.similarity import similarity_matrix, top_k


def _experts(study, method, tasks):
    return {t: study / "experts" / method / t for t in tasks}


def test_fisher_is_nonnegative_finite_and_per_group(quick_study, backbone_of_study):
    fisher = fisher_embedding(quick_study / "experts/lora/textures", backbone_of_study, n_samples=6)
    assert len(fisher) == 24 + 4  # LoRA A and B of query and value in 6 layers, and of the projector's 2 layers
    flat = np.concatenate(list(fisher.values()))
    assert np.isfinite(flat).all() and (flat >= 0).all() and flat.max() > 0
    # an image task's expert: the projector's LoRA is measured too
    assert any(fisher[k].max() > 0 for k in fisher if "pitune_projector" in k)


def test_embeddings_round_trip_through_safetensors(quick_study, backbone_of_study, tmp_path):
    emb = embed_experts(_experts(quick_study, "lora", ["textures", "sklearn_digits", "tweet_sentiment"]),
                        "weights", backbone_of_study)
    path = save_embeddings(tmp_path / "e.safetensors", emb)
    back = load_embeddings(path)
    assert back.names == emb.names and back.meta["method"] == "lora" and back.meta["kind"] == "weights"
    for g in emb.groups:
        np.testing.assert_allclose(back.groups[g], emb.groups[g], rtol=1e-6)
    S = similarity_matrix(back.groups, back.names, kind="cosine")
    # the neighbours come from the round-tripped vectors: the same order as plain numpy cosine on them
    flat = back.flat() / np.linalg.norm(back.flat(), axis=1, keepdims=True)
    i = back.names.index("textures")
    expected = [back.names[j] for j in np.argsort(-(flat @ flat[i])) if j != i][:2]
    assert [n for n, _ in top_k(S, back.names, "textures", 2)] == expected


def test_data_embedding_differs_across_modalities(quick_study, backbone_of_study):
    emb = embed_experts(_experts(quick_study, "lora", ["movie_sentiment", "tweet_sentiment", "textures"]),
                        "data", backbone_of_study, n_samples=32)
    S = similarity_matrix(emb.groups, emb.names, kind="cosine")
    # two sentiment text tasks are closer to each other than to face images
    assert S[0, 1] > S[0, 2]


def test_nan_expert_is_reported_by_task(quick_study, backbone_of_study, tmp_path):
    bad = shutil.copytree(quick_study / "experts/lora/textures", tmp_path / "textures")
    state = load_file(str(bad / "adapter_model.safetensors"))
    k = next(iter(state))
    state[k][0, 0] = float("inf")
    save_file(state, str(bad / "adapter_model.safetensors"))
    dirs = {"textures": bad, "sklearn_digits": quick_study / "experts/lora/sklearn_digits"}
    with pytest.raises(EmbeddingError, match=r"^cannot embed textures: .*NaN/inf") as err:
        embed_experts(dirs, "fisher", backbone_of_study, n_samples=2)
    assert "sklearn_digits" not in str(err.value)  # only the broken task is named


def test_mixed_methods_are_refused(quick_study, backbone_of_study):
    dirs = {"sklearn_digits": quick_study / "experts/lora/sklearn_digits",
            "tweet_sentiment": quick_study / "experts/ia3/tweet_sentiment"}
    with pytest.raises(EmbeddingError, match="different methods"):
        embed_experts(dirs, "fisher", backbone_of_study)


def test_unknown_kind_and_random_reference():
    with pytest.raises(EmbeddingError, match="unknown embedding 'gradient'"):
        embed_experts({}, "gradient")
    r = random_embedding(["a", "b", "c"], seed=1)
    assert r.flat().shape == (3, 64)
    np.testing.assert_array_equal(r.flat(), random_embedding(["a", "b", "c"], seed=1).flat())
