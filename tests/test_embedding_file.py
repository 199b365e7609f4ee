"""The task-embedding file: one writer and one reader, used by the torch side and the hub generator."""

import numpy as np
import pytest

from pitune_core.predict import embedding_file
from pitune_core.predict.embedding_file import EmbeddingFileError


def _example():
    rng = np.random.default_rng(0)
    return ["a", "b", "c"], rng.random((3, 7)).astype(np.float32), [("g1", 3), ("g2", 4)], {"kind": "fisher"}


def test_round_trip(tmp_path):
    names, flat, groups, meta = _example()
    p = embedding_file.write(tmp_path / "sub" / "e.safetensors", names, flat, groups, meta)
    got_names, got, got_groups, got_meta = embedding_file.read(p)
    assert got_names == names and got_groups == groups and got_meta == meta
    assert got.dtype == np.float64 and np.array_equal(got, flat.astype(np.float64))
    assert embedding_file.read(p, dtype=np.float32)[1].dtype == np.float32
    assert [q.name for q in p.parent.iterdir()] == ["e.safetensors"]  # no temporary left behind


def test_both_loaders_read_what_the_writer_wrote(tmp_path):
    pytest.importorskip("torch")
    from pitune_core.predict.embeddings import load_embeddings, save_embeddings
    from pitune_core.study.hub import load_real_fisher

    names, flat, groups, meta = _example()
    p = embedding_file.write(tmp_path / "e.safetensors", names, flat, groups, meta)
    emb = load_embeddings(p)
    assert emb.names == names and list(emb.groups) == ["g1", "g2"] and emb.meta == meta
    np.testing.assert_array_equal(emb.flat(), flat)
    hub_names, E, sizes = load_real_fisher(p)
    assert hub_names == names and sizes == [3, 4] and np.array_equal(E, flat)
    q = save_embeddings(tmp_path / "again.safetensors", emb)  # the torch side writes through the same writer
    np.testing.assert_array_equal(embedding_file.read(q)[1], flat)


@pytest.mark.parametrize("case", ["not safetensors", "groups too short", "names not a list"])
def test_bad_files_are_one_clear_error(tmp_path, case):
    from safetensors.numpy import save

    p = tmp_path / "bad.safetensors"
    if case == "not safetensors":
        p.write_bytes(b"\x00" * 64)
    elif case == "groups too short":
        p.write_bytes(save({"a": np.zeros(4, np.float32)}, metadata={"names": '["a"]', "groups": '[["g", 3]]'}))
    else:
        p.write_bytes(save({"a": np.zeros(4, np.float32)}, metadata={"names": '"a"', "groups": '[["g", 4]]'}))
    with pytest.raises(EmbeddingFileError, match="bad.safetensors"):
        embedding_file.read(p)


def test_the_writer_refuses_inconsistent_input(tmp_path):
    names, flat, groups, meta = _example()
    with pytest.raises(EmbeddingFileError, match="do not match"):
        embedding_file.write(tmp_path / "e", names, flat, [("g1", 3)], meta)
    with pytest.raises(EmbeddingFileError, match="duplicate"):
        embedding_file.write(tmp_path / "e", ["a", "a", "c"], flat, groups, meta)
