"""The schema of a saved expert: what pitune itself writes, and nothing else, reaches peft.

An expert directory may come from someone else, and ``adapter_config.json`` steers what peft
builds: ``layers_to_transform: [0]`` silently drops most LoRA tensors, ``lora_alpha: 1e6`` or
``use_dora: true`` change the output, and a 1 GiB junk tensor is read into memory. So before peft
sees an expert, :func:`validate_expert_dir` checks, from the files' bytes and headers only:

- sizes: ``pitune_expert.json`` and ``adapter_config.json`` under :data:`MAX_JSON_BYTES`, the
  safetensors file under :data:`MAX_ADAPTER_BYTES`, its header under :data:`MAX_HEADER_BYTES`;
  all three regular files (no symlinks, devices or FIFOs);
- the metadata: format, method, task identifier, and a ``method_config`` whose fields are exactly
  the method's dataclass fields, within the bounds pitune trains with (:func:`check_method_config`);
- ``adapter_config.json``: every field equals the peft config pitune builds from that
  ``method_config`` on this backbone (target-module lists compared as sets); only
  ``base_model_name_or_path``, ``peft_version`` and ``inference_mode`` may differ (they describe
  where and with which peft it was written); an unknown field is refused;
- ``adapter_model.safetensors``: the header (read without loading any tensor) must list exactly
  the tensor names, shapes and dtype (float32) that this method and configuration imply on this
  backbone, with consistent byte offsets; only then are the tensors read and checked finite.

:func:`validated_peft_config` is the config handed to peft (built by pitune, never read from the
file). Expected tensor shapes come from a peft model built on the ``meta`` device (no memory).
"""

from __future__ import annotations

import functools
import json
import math
import os
import stat
import struct
from pathlib import Path
from typing import Any

from pitune_core.common import PROJECTOR_LAYERS, PROJECTOR_MODULE, check_task_name
from pitune_core.model.expert_types import METHODS, get_method
from pitune_core.spec.env import trunk_path_from_env

MAX_JSON_BYTES = 1 << 20  # 1 MiB (the shipped ones are ~2 KB)
MAX_ADAPTER_BYTES = 64 << 20  # 64 MiB (a rank-8 LoRA is 0.3 MB; a merged rank-80 one ~3 MB)
MAX_HEADER_BYTES = 1 << 20
#: fields of adapter_config.json that describe where / with what it was written, not what it does
FREE_FIELDS = {"base_model_name_or_path": (str, type(None)), "peft_version": (str, type(None)),
               "inference_mode": (bool,)}
SET_FIELDS = ("target_modules", "feedforward_modules")
#: modules of the BERT-like trunk an expert may adapt (and the image projector it holds)
ALLOWED_MODULES = frozenset({"query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense",
                             *PROJECTOR_LAYERS})
DTYPES = {"F32": 4}

#: the stable name recorded as ``base_model_name_or_path`` in experts pitune writes (the trunk's
#: Hub id), instead of the build machine's path to it
STABLE_TRUNK_ID = "sentence-transformers/all-MiniLM-L6-v2"


class ExpertSchemaError(ValueError):
    """An expert's files do not match what pitune writes (raised as ``ExpertError`` by experts.py)."""


def stable_trunk_id() -> str:
    """The trunk's stable identifier (``$PITUNE_TRUNK_PATH`` trunks: ``local:<folder name>``)."""
    custom = trunk_path_from_env()
    return f"local:{Path(custom).name}" if custom else STABLE_TRUNK_ID


# ----------------------------------------------------------------------------- bounded reads

def _open_regular(path: Path, limit: int) -> tuple[int, int]:
    """(fd, size) of a regular file under ``limit`` bytes, opened without following a symlink."""
    if path.is_symlink():
        raise ExpertSchemaError(f"{path.name} is a symbolic link (refused)")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ExpertSchemaError(f"{path.name} is not a regular file (refused)")
    if st.st_size > limit:
        os.close(fd)
        raise ExpertSchemaError(f"{path.name} is {st.st_size} bytes, over the {limit}-byte limit for an expert")
    return fd, st.st_size


def read_json_bounded(path: Path, limit: int = MAX_JSON_BYTES) -> Any:
    fd, _ = _open_regular(path, limit)
    try:
        raw = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ExpertSchemaError(f"{path.name} is not valid JSON ({str(e)[:200]})") from None


def safetensors_header(path: Path, limit: int = MAX_ADAPTER_BYTES) -> dict[str, dict]:
    """The tensor table of a safetensors file (name -> dtype, shape, data_offsets), checked for
    consistency against the file size; no tensor data is read."""
    fd, size = _open_regular(path, limit)
    try:
        head = os.read(fd, 8)
        if len(head) < 8:
            raise ExpertSchemaError(f"{path.name} is corrupted or truncated (no header)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise ExpertSchemaError(f"{path.name} has a {n}-byte header in a {size}-byte file (corrupted or truncated, or hostile)")
        raw = os.read(fd, n)
    finally:
        os.close(fd)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ExpertSchemaError(f"{path.name} is corrupted or truncated: its header is not valid JSON ({str(e)[:120]})") from None
    if not isinstance(header, dict):
        raise ExpertSchemaError(f"{path.name}: the header is not a table of tensors")
    header.pop("__metadata__", None)
    data_len = size - 8 - n
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or not isinstance(info.get("shape"), list) \
                or not isinstance(info.get("data_offsets"), list) or len(info["data_offsets"]) != 2:
            raise ExpertSchemaError(f"{path.name}: tensor {str(name)[:80]!r} has a malformed header entry")
        shape, (a, b) = info["shape"], info["data_offsets"]
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (*shape, a, b)):
            raise ExpertSchemaError(f"{path.name}: tensor {str(name)[:80]!r} has a malformed shape or offsets")
        item = DTYPES.get(info.get("dtype"))
        if item is None:
            raise ExpertSchemaError(f"{path.name}: tensor {str(name)[:80]!r} has dtype {info.get('dtype')!r}; "
                                    f"pitune experts are float32 (F32)")
        if b - a != math.prod(shape) * item or b > data_len:
            raise ExpertSchemaError(f"{path.name}: tensor {str(name)[:80]!r} does not fit its byte range "
                                    f"(corrupted or truncated)")
        spans.append((a, b))
    spans.sort()
    end = 0
    for a, b in spans:
        if a != end:
            raise ExpertSchemaError(f"{path.name}: tensor data overlaps or has gaps (corrupted or truncated, or hostile)")
        end = b
    if end != data_len:
        raise ExpertSchemaError(f"{path.name}: {data_len - end} bytes after the last tensor (corrupted or truncated, or hostile)")
    return header


# ----------------------------------------------------------------------------- metadata

def _int_in(v, lo: int, hi: int, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ExpertSchemaError(f"{what} must be a whole number in [{lo}, {hi}], got {v!r}")
    return v


def _modules(v, what: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v) \
            or not set(v) <= ALLOWED_MODULES or len(set(v)) != len(v):
        raise ExpertSchemaError(f"{what} must be a non-empty list of distinct trunk modules from "
                                f"{sorted(ALLOWED_MODULES)}, got {str(v)[:120]}")
    return tuple(v)


def check_method_config(method: str, mc: Any) -> dict:
    """The validated constructor arguments of ``method``'s dataclass from a saved ``method_config``."""
    from dataclasses import fields

    if method not in METHODS:
        raise ExpertSchemaError(f"unknown expert method {method!r}; expected one of {', '.join(METHODS)}")
    if not isinstance(mc, dict):
        raise ExpertSchemaError("method_config must be an object")
    known = {f.name for f in fields(METHODS[method])}
    extra = set(mc) - known
    if extra:
        raise ExpertSchemaError(f"method_config has fields pitune does not write for {method}: "
                                f"{', '.join(sorted(map(str, extra)))[:200]}")
    if mc.get("name", method) != method:
        raise ExpertSchemaError(f"method_config names method {mc.get('name')!r}, not {method!r}")
    out: dict[str, Any] = {}
    lr = mc.get("lr")
    if lr is not None:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (0 < lr <= 10) or not math.isfinite(lr):
            raise ExpertSchemaError(f"method_config.lr must be a positive number <= 10, got {lr!r}")
        out["lr"] = float(lr)
    if method == "lora":
        r = _int_in(mc.get("r", 8), 1, 1024, "LoRA rank r")
        alpha = mc.get("alpha", 16)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) \
                or not 0 < alpha <= 4 * r:
            raise ExpertSchemaError(f"LoRA alpha must be a number in (0, 4·r = {4 * r}] (pitune uses 2·r), "
                                    f"got {alpha!r}")
        dropout = mc.get("dropout", 0.0)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ExpertSchemaError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
        out.update(r=r, alpha=alpha, dropout=float(dropout),
                   target_modules=_modules(mc.get("target_modules", ["query", "value"]), "LoRA target_modules"))
    elif method == "prompt":
        out["num_virtual_tokens"] = _int_in(mc.get("num_virtual_tokens", 10), 1, 1024, "num_virtual_tokens")
    elif method == "ia3":
        tm = _modules(mc.get("target_modules", ["key", "value", "output.dense"]), "IA3 target_modules")
        ff = _modules(mc.get("feedforward_modules", ["output.dense"]), "IA3 feedforward_modules")
        if not set(ff) <= set(tm):
            raise ExpertSchemaError("IA3 feedforward_modules must be a subset of target_modules")
        out.update(target_modules=tm, feedforward_modules=ff)
    return out


def check_meta(meta: Any, expert_format: str) -> dict:
    if not isinstance(meta, dict):
        raise ExpertSchemaError("pitune_expert.json must be a JSON object")
    if meta.get("format") != expert_format:
        raise ExpertSchemaError(f"unknown expert format {str(meta.get('format'))[:80]!r} (expected {expert_format})")
    check_method_config(meta.get("method"), meta.get("method_config"))
    if "task" in meta:
        try:
            check_task_name(meta["task"], "the expert's task")
        except ValueError as e:
            raise ExpertSchemaError(str(e)) from None
    if not isinstance(meta.get("backbone_id"), (str, type(None))) or len(str(meta.get("backbone_id"))) > 200:
        raise ExpertSchemaError("backbone_id must be a short string")
    return meta


# ----------------------------------------------------------------------------- what the method implies

def _trunk_dir(trunk: str | None = None) -> str:
    """The trunk folder a check is made against: ``trunk`` when given (an imported library's base), else
    the backbone's (:func:`pitune_core.model.backbone.trunk_path`)."""
    from pitune_core.model.backbone import trunk_path  # lazy: loads torch

    return trunk or trunk_path()


@functools.lru_cache(maxsize=4)
def _trunk_config(trunk: str):
    """The transformers config of the trunk folder ``trunk`` (cached by folder)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(trunk)


def _method(method: str, mc_json: str):
    kw = json.loads(mc_json)
    for k in SET_FIELDS:
        if k in kw:
            kw[k] = tuple(kw[k])
    return get_method(method, **kw)


def _expected(method: str, mc_json: str, trunk: str | None = None) -> tuple[dict, dict]:
    """(peft config as a dict, {tensor name: shape}) of this method/config on this trunk (meta device);
    ``trunk``: another trunk folder than the backbone's (an imported library's base)."""
    return _expected_on(_trunk_dir(trunk), method, mc_json)


@functools.lru_cache(maxsize=32)
def _expected_on(trunk: str, method: str, mc_json: str) -> tuple[dict, dict]:
    import warnings

    import torch
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoModel

    from pitune_core.model.backbone import Projector  # lazy: loads torch

    cfg = _trunk_config(trunk)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trunk = AutoModel.from_config(cfg)
        trunk.add_module(PROJECTOR_MODULE, Projector(cfg.hidden_size))  # as UnifiedBackbone's trunk holds it
        pm = get_peft_model(trunk, _method(method, mc_json).peft_config())
    pcfg = pm.peft_config["default"]
    if method == "prompt":
        shapes = {"prompt_embeddings": [pcfg.num_virtual_tokens * pcfg.num_transformer_submodules, pcfg.token_dim]}
    else:
        shapes = {k: list(v.shape) for k, v in get_peft_model_state_dict(pm).items()}
    return pcfg.to_dict(), shapes


def _norm(key: str, v):
    if key in SET_FIELDS and isinstance(v, (list, tuple, set, frozenset)):
        return sorted(map(str, v))
    if hasattr(v, "value"):  # enums (task_type, peft_type)
        return v.value
    return v


def check_adapter_config(adapter_cfg: Any, method: str, mc: dict, trunk: str | None = None) -> None:
    if not isinstance(adapter_cfg, dict):
        raise ExpertSchemaError("adapter_config.json must be a JSON object")
    want, _ = _expected(method, json.dumps(mc, sort_keys=True), trunk)
    for key, value in adapter_cfg.items():
        if key in FREE_FIELDS:
            if not isinstance(value, FREE_FIELDS[key]) or (isinstance(value, str) and len(value) > 1000):
                raise ExpertSchemaError(f"adapter_config.json: {key} has an unexpected value {str(value)[:80]!r}")
            continue
        if key not in want:
            raise ExpertSchemaError(f"adapter_config.json has a field pitune does not write: {str(key)[:80]!r}")
        if _norm(key, value) != _norm(key, want[key]):
            raise ExpertSchemaError(f"adapter_config.json: {key} = {str(value)[:80]} but pitune's {method} expert "
                                    f"with this method_config has {str(_norm(key, want[key]))[:80]} (refused)")


def check_tensors(header: dict, method: str, mc: dict, path: Path, trunk: str | None = None) -> None:
    _, shapes = _expected(method, json.dumps(mc, sort_keys=True), trunk)
    names = set(header)
    missing, extra = sorted(set(shapes) - names), sorted(names - set(shapes))
    if missing or extra:
        what = []
        if missing:
            what.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if extra:
            what.append(f"{len(extra)} unexpected (e.g. {str(extra[0])[:80]})")
        raise ExpertSchemaError(f"{path.name}: tensors do not match a {method} expert on this backbone: "
                                f"{'; '.join(what)}")
    for name, shape in shapes.items():
        if header[name]["shape"] != shape:
            raise ExpertSchemaError(f"{path.name}: tensor {name} has shape {header[name]['shape']}, expected {shape}")


def validate_expert_dir(path: Path, meta_name: str, expert_format: str) -> tuple[dict, dict]:
    """(meta, validated method kwargs) of an expert directory; ``ExpertSchemaError`` otherwise.

    Reads headers and JSON only (bounded); the caller then reads the tensors.
    """
    meta = check_meta(read_json_bounded(path / meta_name), expert_format)
    mc = check_method_config(meta["method"], meta["method_config"])
    check_adapter_config(read_json_bounded(path / "adapter_config.json"), meta["method"], mc)
    header = safetensors_header(path / "adapter_model.safetensors")
    check_tensors(header, meta["method"], mc, path / "adapter_model.safetensors")
    return meta, mc


def validated_peft_config(method: str, mc: dict, base_model_name_or_path: str | None):
    """The peft config handed to peft: built by pitune from the validated method config."""
    pcfg = _method(method, json.dumps(mc, sort_keys=True)).peft_config()
    pcfg.base_model_name_or_path = base_model_name_or_path
    return pcfg
