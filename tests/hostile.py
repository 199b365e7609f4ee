"""A corpus of hostile study directories and expert directories, generated in a temporary folder.

Each builder copies a small, valid part of the shipped study (``precomputed/``) and breaks it in one
way someone else's study could: a manifest that points outside the study or at a device, a
malformed manifest, a symlink, an unlisted file, an expert whose ``adapter_config.json`` asks peft
for something pitune never writes, a huge junk tensor. Nothing here is committed as a binary; the
tests build what they need in ``tmp_path``.

``HOSTILE_STUDIES`` maps a case name to ``(builder, expected problem substring)``;
``HOSTILE_EXPERTS`` likewise for expert directories (``ExpertError`` message substring).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

from pitune_core.common import sha256_file
from pitune_core.paths import SHIPPED_STUDY

SHIPPED_LORA = SHIPPED_STUDY / "experts" / "lora" / "amazon_sentiment"
SHIPPED_PROMPT = SHIPPED_STUDY / "experts" / "prompt" / "movie_sentiment"
SHIPPED_IA3 = SHIPPED_STUDY / "experts" / "ia3" / "movie_sentiment"


# ----------------------------------------------------------------------------- studies

def mini_study(root: Path) -> Path:
    """A small valid study: tasks.json, one expert and their manifest (what verify checks)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIPPED_STUDY / "tasks.json", root / "tasks.json")
    shutil.copytree(SHIPPED_LORA, root / "experts" / "lora" / "amazon_sentiment")
    write_manifest(root)
    return root


def write_manifest(root: Path, files: dict | None = None, **extra) -> None:
    if files is None:
        files = {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
                 if p.is_file() and not p.is_symlink() and p.name != "manifest.json"
                 and not p.relative_to(root).parts[0].startswith(".")}
    (root / "manifest.json").write_text(json.dumps({"format": "pitune-study/1", "files": files, **extra}))


def _manifest_entry(root: Path, rel: str, digest: str = "0" * 64) -> None:
    m = json.loads((root / "manifest.json").read_text())
    m["files"][rel] = digest
    (root / "manifest.json").write_text(json.dumps(m))


def dotdot_dev_zero(root: Path) -> Path:
    mini_study(root)
    _manifest_entry(root, "../../../../../../../../dev/zero")
    return root


def absolute_etc_passwd(root: Path) -> Path:
    mini_study(root)
    _manifest_entry(root, "/etc/passwd")
    return root


def symlink_out(root: Path) -> Path:
    mini_study(root)
    os.symlink("/etc/passwd", root / "passwd")
    _manifest_entry(root, "passwd")
    return root


def symlink_dir_out(root: Path) -> Path:
    mini_study(root)
    os.symlink("/etc", root / "etc")
    _manifest_entry(root, "etc/passwd")
    return root


def fifo_inside(root: Path) -> Path:
    mini_study(root)
    os.mkfifo(root / "pipe")
    _manifest_entry(root, "pipe")
    return root


def manifest_is_list(root: Path) -> Path:
    mini_study(root)
    (root / "manifest.json").write_text("[1, 2, 3]")
    return root


def files_is_list(root: Path) -> Path:
    mini_study(root)
    (root / "manifest.json").write_text(json.dumps({"files": ["tasks.json"]}))
    return root


def digest_not_string(root: Path) -> Path:
    mini_study(root)
    write_manifest(root, {"tasks.json": 12345})
    return root


def manifest_not_json(root: Path) -> Path:
    mini_study(root)
    (root / "manifest.json").write_text("{not json")
    return root


def manifest_huge(root: Path) -> Path:
    mini_study(root)
    with open(root / "manifest.json", "wb") as f:
        f.truncate(20 << 20)  # sparse: 20 MiB of NULs, over the limit
    return root


def unlisted_file(root: Path) -> Path:
    mini_study(root)
    (root / "experts" / "lora" / "amazon_sentiment" / "payload.py").write_text("print('hi')\n")
    return root


def corrupt_file(root: Path) -> Path:
    mini_study(root)
    (root / "tasks.json").write_text("[]")
    return root


def manifest_fifo(root: Path) -> Path:
    """issue 29: `mkfifo S/manifest.json` hung every reader that opened it to read it whole."""
    mini_study(root)
    (root / "manifest.json").unlink()
    os.mkfifo(root / "manifest.json")
    return root


def manifest_dev_zero(root: Path) -> Path:
    """issue 29: `ln -s /dev/zero S/manifest.json` ran a reader out of memory."""
    mini_study(root)
    (root / "manifest.json").unlink()
    os.symlink("/dev/zero", root / "manifest.json")
    return root


HOSTILE_STUDIES = {
    "manifest_fifo": (manifest_fifo, "FIFO"),
    "manifest_dev_zero": (manifest_dev_zero, "symbolic link"),
    "dotdot_dev_zero": (dotdot_dev_zero, "points outside the study"),
    "absolute_etc_passwd": (absolute_etc_passwd, "points outside the study"),
    "symlink_out": (symlink_out, "symbolic link"),
    "symlink_dir_out": (symlink_dir_out, "symbolic link"),
    "fifo_inside": (fifo_inside, "not a regular file"),
    "manifest_is_list": (manifest_is_list, "must be a JSON object"),
    "files_is_list": (files_is_list, "'files' must be an object"),
    "digest_not_string": (digest_not_string, "not a sha256 hex string"),
    "manifest_not_json": (manifest_not_json, "not valid JSON"),
    "manifest_huge": (manifest_huge, "over the"),
    "unlisted_file": (unlisted_file, "not in the manifest: experts/lora/amazon_sentiment/payload.py"),
    "corrupt_file": (corrupt_file, "sha256 mismatch"),
}


# ----------------------------------------------------------------------------- experts

def copy_expert(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def _edit_both(d: Path, adapter: dict, method: dict) -> None:
    """Change adapter_config.json AND pitune_expert.json's method_config consistently."""
    _edit_json(d / "adapter_config.json", **adapter)
    meta = json.loads((d / "pitune_expert.json").read_text())
    meta["method_config"].update(method)
    (d / "pitune_expert.json").write_text(json.dumps(meta))


def layers_to_transform(d: Path) -> Path:
    copy_expert(SHIPPED_LORA, d)
    _edit_json(d / "adapter_config.json", layers_to_transform=[0])
    return d


def huge_alpha(d: Path) -> Path:
    copy_expert(SHIPPED_LORA, d)
    _edit_json(d / "adapter_config.json", lora_alpha=1e6)
    return d


def huge_alpha_both(d: Path) -> Path:
    copy_expert(SHIPPED_LORA, d)
    _edit_both(d, {"lora_alpha": 1e6}, {"alpha": 1e6})
    return d


def use_dora(d: Path) -> Path:
    copy_expert(SHIPPED_LORA, d)
    _edit_json(d / "adapter_config.json", use_dora=True)
    return d


def unknown_field(d: Path) -> Path:
    copy_expert(SHIPPED_LORA, d)
    _edit_json(d / "adapter_config.json", trust_remote_code=True)
    return d


def extra_method_field(d: Path) -> Path:
    copy_expert(SHIPPED_LORA, d)
    meta = json.loads((d / "pitune_expert.json").read_text())
    meta["method_config"]["layers"] = [0]
    (d / "pitune_expert.json").write_text(json.dumps(meta))
    return d


def append_junk_tensor(d: Path, nbytes: int = 1 << 30) -> Path:
    """Rewrite the safetensors file with one extra (sparse, all-zero) float32 tensor of nbytes."""
    copy_expert(SHIPPED_LORA, d)
    p = d / "adapter_model.safetensors"
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    header["junk"] = {"dtype": "F32", "shape": [nbytes // 4], "data_offsets": [len(data), len(data) + nbytes]}
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + data)
        f.truncate(8 + len(hb) + len(data) + nbytes)  # sparse: no disk used
    return d


def small_junk_tensor(d: Path) -> Path:
    return append_junk_tensor(d, 4096)


def wrong_shape(d: Path) -> Path:
    from safetensors.torch import load_file, save_file

    copy_expert(SHIPPED_LORA, d)
    p = d / "adapter_model.safetensors"
    state = load_file(str(p))
    k = min(state)
    state[k] = state[k][:4].contiguous()
    save_file(state, str(p))
    return d


def dropped_tensors(d: Path) -> Path:
    from safetensors.torch import load_file, save_file

    copy_expert(SHIPPED_LORA, d)
    p = d / "adapter_model.safetensors"
    state = {k: v for k, v in load_file(str(p)).items() if ".layer.0." in k}
    save_file(state, str(p))
    return d


def float64_tensors(d: Path) -> Path:
    from safetensors.torch import load_file, save_file

    copy_expert(SHIPPED_LORA, d)
    p = d / "adapter_model.safetensors"
    save_file({k: v.double() for k, v in load_file(str(p)).items()}, str(p))
    return d


def symlinked_config(d: Path) -> Path:
    copy_expert(SHIPPED_LORA, d)
    (d / "adapter_config.json").unlink()
    os.symlink("/etc/passwd", d / "adapter_config.json")
    return d


def meta_is_list(d: Path) -> Path:
    copy_expert(SHIPPED_LORA, d)
    (d / "pitune_expert.json").write_text("[]")
    return d


def markup_task(d: Path) -> Path:
    copy_expert(SHIPPED_LORA, d)
    _edit_json(d / "pitune_expert.json", task="<img src=x onerror=alert(1)>")
    return d


def prompt_many_tokens(d: Path) -> Path:
    copy_expert(SHIPPED_PROMPT, d)
    _edit_both(d, {"num_virtual_tokens": 500}, {"num_virtual_tokens": 500})
    return d


def ia3_extra_module(d: Path) -> Path:
    copy_expert(SHIPPED_IA3, d)
    _edit_json(d / "adapter_config.json", target_modules=["key", "value", "output.dense", "query"])
    return d


HOSTILE_EXPERTS = {
    "layers_to_transform": (layers_to_transform, "layers_to_transform"),
    "huge_alpha": (huge_alpha, "lora_alpha"),
    "huge_alpha_both": (huge_alpha_both, "LoRA alpha must be"),
    "use_dora": (use_dora, "use_dora"),
    "unknown_field": (unknown_field, "field pitune does not write"),
    "extra_method_field": (extra_method_field, "method_config has fields"),
    "junk_tensor_1gib": (append_junk_tensor, "over the"),
    "junk_tensor_small": (small_junk_tensor, "unexpected"),
    "wrong_shape": (wrong_shape, "has shape"),
    "dropped_tensors": (dropped_tensors, "missing"),
    "float64_tensors": (float64_tensors, "float32"),
    "symlinked_config": (symlinked_config, "symbolic link"),
    "meta_is_list": (meta_is_list, "JSON object"),
    "markup_task": (markup_task, "not a task identifier"),
    "prompt_many_tokens": (prompt_many_tokens, "prompt_embeddings has shape"),
    "ia3_extra_module": (ia3_extra_module, "target_modules"),
}
