"""Shared fixtures: the real backbone (shipped projector) and quiet progress bars."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("PITUNE_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the CLI's default ``--workers auto`` would start worker processes under every in-process call;
# tests/test_workers.py asks for them where it tests them
os.environ.setdefault("PITUNE_WORKERS", "1")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty user-task store (``PITUNE_TASKS``) in the test's tmp_path."""
    root = tmp_path / "tasks"
    monkeypatch.setenv("PITUNE_TASKS", str(root))
    return root


@pytest.fixture(scope="session")
def backbone():
    from pitune_core.model.backbone import UnifiedBackbone

    return UnifiedBackbone.load()


@pytest.fixture(scope="session")
def short_training():
    """A small real training budget for tests (the defaults train for minutes)."""
    from pitune_core.model.experts import TrainConfig

    return TrainConfig(min_steps=30, max_steps=30, batch_size=16)


@pytest.fixture(scope="session")
def quick_study(tmp_path_factory):
    """A real quick study (``pitune precompute --quick``), built once per test session."""
    from pitune_core.cli.main import main

    out = tmp_path_factory.mktemp("study") / "quick"
    assert main(["precompute", "--quick", "--out", str(out), "--projector", "precomputed/backbone"]) == 0
    return out


@pytest.fixture(scope="session")
def backbone_of_study(quick_study):
    from pitune_core.model.backbone import UnifiedBackbone

    return UnifiedBackbone.load(quick_study / "backbone")
