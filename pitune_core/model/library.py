"""Expert libraries brought from elsewhere: peft LoRA adapters trained by anyone's script, imported.

An adapter folder written by ``save_pretrained`` (``adapter_config.json`` + ``adapter_model.safetensors``)
carries no pitune metadata and comes from someone else, so it is checked as strictly as pitune's own
experts (:mod:`pitune_core.model.expert_schema`), against the *base model folder* it is imported on:

- the tree under DIR is walked without following links; any symbolic link is refused (nothing is
  read from outside DIR), only regular files under the schema's size limits are read;
- ``adapter_config.json`` goes through the schema's own allow-list (:func:`expert_schema.check_adapter_config`)
  once the few fields a foreign script legitimately sets differently are normalised: the task type
  (none or feature extraction), the initialisation (a trained adapter no longer depends on it, but
  PiSSA/OLoRA/LoftQ ones change the base and are refused), the dropout (set to 0, as in pitune's own
  experts: it would act only while tuning) and ``lora_alpha`` (folded into B: ``(alpha/r)·B·A = (2r/r)·(alpha/(2r))·B·A``, so every
  imported adapter has pitune's scaling ``alpha = 2r`` and the update ΔW is unchanged). A head of its own
  (``modules_to_save``) is reported and ignored: pitune scores every task by label-as-text matching;
- ``adapter_model.safetensors``: the header (no tensor read) lists exactly the LoRA tensors and shapes
  this config implies on *this base* (target modules the base lacks, or another hidden size, are refused),
  float32, consistent offsets; then the tensors are read (safetensors, never pickle) and checked finite;
- one rank and one set of target modules per library (a library is interpolated as one parameter space).

The base is a folder, never a name: nothing is fetched. It is identified by its config (minus the
fields that only say where and with which version it was written) and the sha256 of its
``model.safetensors`` (``.bin`` weights are never unpickled), recorded at import and checked again
before every use: a base that moved or changed is refused in one line, not trusted by its path string.

Each checked adapter is written as an ordinary pitune expert (peft files + ``pitune_expert.json``,
the adapter's name as its task) under ``LIBRARY/experts/lora/``, so every pitune path that takes
expert folders (π-Tuning, the baselines, embeddings) reads it unchanged. Libraries live in the open
under :func:`libraries_dir`, never inside a study. :func:`stage_import` checks everything and writes
into a temporary folder; the caller adds the predictions and :func:`commit` renames it into place,
so nothing is ever imported half-way.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from pitune_core.common import PROJECTOR_LAYERS, check_task_name, clean_stale_tmp, sha256_file, tmp_prefix
from pitune_core.model import expert_schema as schema
from pitune_core.paths import StudyPaths, user_tasks_dir
from pitune_core.spec.env import TRUNK_PATH_ENV
from pitune_core.spec.vocab import EXPERT_META_FILE
from pitune_core.common import replace_dir

LIBRARY_FORMAT = "pitune-library/1"
LIBRARY_FILE = "library.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_WEIGHTS = "model.safetensors"
#: an expert's metadata file (:data:`pitune_core.model.experts.EXPERT_META`, named here for torch-free readers)
EXPERT_META = EXPERT_META_FILE
#: base architectures whose modules carry the names pitune's LoRA targets (query, value, ...)
SUPPORTED_BASES = frozenset({"bert", "roberta", "xlm-roberta", "electra"})
#: config.json fields that say where / with what a base was written, not what it computes
VOLATILE_BASE_FIELDS = frozenset({"_name_or_path", "transformers_version", "architectures", "gradient_checkpointing",
                                  "use_cache", "torch_dtype", "dtype"})
#: trunk modules an imported adapter may adapt (pitune's allow-list without its image projector)
TRUNK_MODULES = schema.ALLOWED_MODULES - set(PROJECTOR_LAYERS)
#: initialisations after which the trained adapter alone is the update (others rewrite the base)
PLAIN_INITS = (True, False, "gaussian")


class LibraryError(ValueError):
    """A library, an adapter or a base folder that pitune refuses (one line, naming it)."""


@dataclass(frozen=True)
class Limits:
    """How much an import reads: the one owner of these numbers (an adapter's own size limits are the
    expert schema's, :data:`expert_schema.MAX_ADAPTER_BYTES` and :data:`expert_schema.MAX_JSON_BYTES`)."""

    max_adapters: int = 500
    max_entries: int = 20_000  # files and folders walked under DIR
    max_depth: int = 8
    max_base_bytes: int = 4 << 30  # the base's model.safetensors (MiniLM-L6: 91 MB)
    max_scale: float = 64.0  # alpha / r of an adapter (pitune trains with 2)

    def __post_init__(self):
        for f in ("max_adapters", "max_entries", "max_depth", "max_base_bytes"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Limits.{f} must be a whole number >= 1, got {v!r}")
        if not (isinstance(self.max_scale, (int, float)) and math.isfinite(self.max_scale) and self.max_scale > 0):
            raise ValueError(f"Limits.max_scale must be a positive number, got {self.max_scale!r}")


LIMITS = Limits()


def libraries_dir() -> Path:
    """Where libraries live: ``$PITUNE_LIBRARIES``, else ``libraries/`` beside the user task store
    (``~/.local/share/pitune/libraries``); the user's data, never inside a study or the package."""
    env = os.environ.get("PITUNE_LIBRARIES")
    return Path(env).expanduser().resolve() if env else user_tasks_dir().parent / "libraries"


def check_library_name(name: Any) -> str:
    """A library name is a task identifier (never a path, markup or a control character)."""
    return check_task_name(name, "library name")


def adapter_name(rel: str) -> str:
    """The task identifier an adapter folder is known by: its path under DIR, lower-cased, every other
    character an underscore (``sst2-lora`` -> ``sst2_lora``, ``runs/a`` -> ``runs_a``)."""
    name = re.sub(r"[^a-z0-9_]", "_", rel.lower()).strip("_")[:64] or "adapter"
    if not name[0].isalpha():
        name = ("a_" + name)[:64]
    return check_task_name(name, "adapter name")


# ----------------------------------------------------------------------------- the base model folder

@dataclass(frozen=True)
class BaseModel:
    """A base model folder and its identity (config hash + weight hash)."""

    path: str
    model_type: str
    config_sha256: str
    weights_sha256: str
    hidden_size: int

    @property
    def id(self) -> str:
        """A short identity: architecture + the first hex digits of the weight hash."""
        return f"{self.model_type}-{self.weights_sha256[:12]}"

    @property
    def backbone_id(self) -> str:
        """The ``backbone_id`` recorded in the imported experts (a study's experts name their projector)."""
        return f"library-base/{self.id}"

    def same_as(self, other: "BaseModel") -> bool:
        return (self.model_type, self.config_sha256, self.weights_sha256) == \
            (other.model_type, other.config_sha256, other.weights_sha256)


def default_base() -> str:
    """The packaged MiniLM the shipped backbone uses."""
    from pitune_core.model.backbone import trunk_path  # lazy: loads torch

    return trunk_path()


def inspect_base(path: str | Path | None = None, limits: Limits = LIMITS) -> BaseModel:
    """Identify a base model folder, or refuse it in one line (missing, no config, an unsupported
    architecture, remote code, no safetensors weights)."""
    shown = str(path) if path is not None else "the packaged MiniLM"
    p = Path(path if path is not None else default_base()).expanduser()
    if not p.is_dir():
        raise LibraryError(f"base model folder {shown} does not exist (a base is a local folder; nothing is fetched)")
    p = p.resolve()
    try:
        cfg = schema.read_json_bounded(p / "config.json")
    except FileNotFoundError:
        raise LibraryError(f"base model folder {shown} has no config.json (save it with save_pretrained)") from None
    except schema.ExpertSchemaError as e:
        raise LibraryError(f"base model folder {shown}: {e}") from None
    if not isinstance(cfg, dict):
        raise LibraryError(f"base model folder {shown}: config.json is not a JSON object")
    if "auto_map" in cfg:
        raise LibraryError(f"base model folder {shown} names remote code (auto_map); pitune never imports it")
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_BASES:
        raise LibraryError(f"base model folder {shown} is a {str(model_type)[:40]!r} model; supported: "
                           f"{', '.join(sorted(SUPPORTED_BASES))} (BERT-like encoders)")
    hidden = cfg.get("hidden_size")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise LibraryError(f"base model folder {shown}: config.json has no valid hidden_size")
    weights = p / BASE_WEIGHTS
    if not weights.is_file():
        raise LibraryError(f"base model folder {shown} has no {BASE_WEIGHTS} (pitune reads safetensors only, "
                           f"never .bin pickles)")
    if weights.stat().st_size > limits.max_base_bytes:
        raise LibraryError(f"base model folder {shown}: {BASE_WEIGHTS} is over the {limits.max_base_bytes}-byte limit")
    stable = {k: v for k, v in cfg.items() if k not in VOLATILE_BASE_FIELDS}
    import hashlib

    cfg_sha = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()
    return BaseModel(str(p), model_type, cfg_sha, sha256_file(weights), hidden)


@contextlib.contextmanager
def using_base(base: BaseModel) -> Iterator[None]:
    """Within this block the backbone's trunk (and the expert schema's checks) is ``base``: the packaged
    MiniLM needs nothing; another base is set as ``$PITUNE_TRUNK_PATH`` (the backbone's existing switch
    for a BERT-like trunk folder) and restored afterwards."""
    if Path(default_base()).resolve() == Path(base.path):
        yield
        return
    old = os.environ.get(TRUNK_PATH_ENV)
    os.environ[TRUNK_PATH_ENV] = base.path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(TRUNK_PATH_ENV, None)
        else:
            os.environ[TRUNK_PATH_ENV] = old


# ----------------------------------------------------------------------------- finding adapters

def find_adapters(root: Path, limits: Limits = LIMITS) -> list[tuple[str, Path]]:
    """``(name, folder)`` of every adapter folder under ``root`` (a folder holding ``adapter_config.json``),
    sorted; refused: a symbolic link anywhere in the tree, a tree too deep or too large, two folders
    that map to one name."""
    if not root.is_dir():
        raise LibraryError(f"{root} is not a folder of adapters")
    root = root.resolve()
    found: dict[str, Path] = {}
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel = here.relative_to(root)
        if len(rel.parts) > limits.max_depth:
            raise LibraryError(f"{rel}: more than {limits.max_depth} folders deep under DIR (refused)")
        seen += len(dirnames) + len(filenames)
        if seen > limits.max_entries:
            raise LibraryError(f"more than {limits.max_entries} files and folders under DIR (refused)")
        for n in (*dirnames, *filenames):
            p = here / n
            if p.is_symlink():
                target = os.path.realpath(p)
                where = "out of DIR" if not Path(target).is_relative_to(root) else "inside DIR"
                raise LibraryError(f"{p.relative_to(root)}: a symbolic link {where} (refused: an import reads "
                                   f"regular files under DIR only)")
        dirnames.sort()
        if ADAPTER_CONFIG in filenames:
            name = adapter_name(str(rel) if rel.parts else root.name)
            if name in found:
                raise LibraryError(f"{rel} and {found[name].relative_to(root)} are both named {name!r}; rename one")
            found[name] = here
            if len(found) > limits.max_adapters:
                raise LibraryError(f"more than {limits.max_adapters} adapters under DIR (refused)")
    return sorted(found.items())


# ----------------------------------------------------------------------------- checking one adapter

@dataclass
class CheckedAdapter:
    """One adapter that passed every check: its tensors under pitune's names, B scaled to alpha = 2r."""

    name: str
    source: str  # its folder, relative to DIR
    r: int
    alpha: float  # as the file had it (folded into B)
    dropout: float
    target_modules: tuple[str, ...]
    ignored_heads: list[str]
    sha256: dict[str, str]
    tensors: dict = field(repr=False, default_factory=dict)

    @property
    def method_config(self) -> dict:
        """Its pitune method config (``LoraMethod`` fields), as every expert of the library records it."""
        return lora_method_config(self.r, self.target_modules)


def lora_method_config(r: int, target_modules) -> dict:
    from pitune_core.model.experts import LoraMethod  # lazy: loads torch

    # as pitune_expert.json holds it (JSON: lists, not tuples)
    return json.loads(json.dumps(asdict(LoraMethod(r=r, alpha=2 * r, dropout=0.0,
                                                   target_modules=tuple(sorted(target_modules))))))


def _mc(r: int, targets) -> dict:
    """The schema's validated method config of a LoRA with rank ``r`` on ``targets`` at pitune's scaling."""
    return schema.check_method_config("lora", {"r": r, "alpha": 2 * r, "dropout": 0.0,
                                               "target_modules": sorted(targets)})


def check_adapter(name: str, folder: Path, root: Path, base: BaseModel, limits: Limits = LIMITS) -> CheckedAdapter:
    """Every check of the module docstring on one adapter folder; ``LibraryError`` naming it otherwise."""
    try:
        return _check_adapter(name, folder, root, base, limits)
    except (schema.ExpertSchemaError, LibraryError) as e:
        raise LibraryError(f"adapter {name} ({folder.relative_to(root) or '.'}): {e}") from None


def _check_adapter(name: str, folder: Path, root: Path, base: BaseModel, limits: Limits) -> CheckedAdapter:
    import torch
    from safetensors import safe_open

    if not (folder / ADAPTER_WEIGHTS).exists():
        raise LibraryError(f"no {ADAPTER_WEIGHTS} beside {ADAPTER_CONFIG} (pitune never reads .bin pickles)")
    cfg = schema.read_json_bounded(folder / ADAPTER_CONFIG)
    if not isinstance(cfg, dict):
        raise LibraryError(f"{ADAPTER_CONFIG} is not a JSON object")
    if cfg.get("peft_type") != "LORA":
        raise LibraryError(f"a {str(cfg.get('peft_type'))[:40]} adapter; a library holds LoRA adapters")
    targets = cfg.get("target_modules")
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise LibraryError(f"target_modules must be a list of module names (a pattern is refused), got "
                           f"{str(targets)[:80]}")
    if not set(targets) <= TRUNK_MODULES:
        raise LibraryError(f"target_modules {sorted(set(targets) - TRUNK_MODULES)[:5]} are not modules of the "
                           f"base's encoder layers pitune adapts ({', '.join(sorted(TRUNK_MODULES))})")
    r = cfg.get("r")
    mc = _mc(r, targets)  # rank bounds, module list, as for pitune's own experts
    alpha = cfg.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) \
            or not 0 < alpha <= limits.max_scale * r:
        raise LibraryError(f"lora_alpha must be a number in (0, {limits.max_scale:g}·r], got {str(alpha)[:40]}")
    dropout = cfg.get("lora_dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise LibraryError(f"lora_dropout must be in [0, 1), got {str(dropout)[:40]}")
    if cfg.get("task_type") not in (None, "FEATURE_EXTRACTION"):
        raise LibraryError(f"task_type {str(cfg.get('task_type'))[:40]}: pitune imports encoder adapters "
                           f"(task_type none or FEATURE_EXTRACTION)")
    if cfg.get("init_lora_weights", True) not in PLAIN_INITS:
        raise LibraryError(f"init_lora_weights {str(cfg.get('init_lora_weights'))[:40]} rewrites the base model's "
                           f"weights; convert the adapter to a plain LoRA first")
    mapping = cfg.get("auto_mapping")  # peft's note of the base class; pitune never imports what it names
    if mapping is not None and (not isinstance(mapping, dict) or len(mapping) > 8
                                or not all(isinstance(v, (str, type(None))) and len(str(v)) <= 200 for v in mapping.values())):
        raise LibraryError("auto_mapping must be a short object of names")
    heads = cfg.get("modules_to_save") or []
    if not isinstance(heads, list) or len(heads) > 32 or not all(isinstance(h, str) and h for h in heads):
        raise LibraryError("modules_to_save must be a short list of module names")
    # the same allow-list as pitune's own experts, once the fields a foreign script sets differently
    # are put at pitune's values (each was checked above)
    want, _ = schema._expected("lora", json.dumps(mc, sort_keys=True), base.path)
    plain = {**cfg, "lora_alpha": want["lora_alpha"], "lora_dropout": want["lora_dropout"],
             "task_type": want["task_type"], "init_lora_weights": want["init_lora_weights"], "modules_to_save": None,
             "auto_mapping": want["auto_mapping"]}
    schema.check_adapter_config(plain, "lora", mc, base.path)
    header = schema.safetensors_header(folder / ADAPTER_WEIGHTS)
    renamed = _pitune_names(header, heads, base)
    try:
        schema.check_tensors({n: header[o] for n, o in renamed.items()}, "lora", mc, folder / ADAPTER_WEIGHTS,
                             base.path)
    except schema.ExpertSchemaError as e:
        raise LibraryError(f"{e} -- it does not fit base {base.id} ({base.path}); was it trained on another "
                           f"base model? (give that one with --base)") from None
    scale = float(alpha) / (2 * r)
    tensors = {}
    with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as f:
        for new, old in renamed.items():
            t = f.get_tensor(old)
            if not torch.isfinite(t).all():
                raise LibraryError(f"tensor {old[:80]} contains NaN/inf")
            tensors[new] = (t * scale if ".lora_B." in new and scale != 1.0 else t).contiguous()
    return CheckedAdapter(name, str(folder.relative_to(root)), int(r), float(alpha), float(dropout),
                          tuple(sorted(targets)), list(heads),
                          {f: sha256_file(folder / f) for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)}, tensors)


def _pitune_names(header: dict, heads: list[str], base: BaseModel) -> dict[str, str]:
    """{pitune's tensor name: the file's} for the LoRA tensors; a head's tensors (``modules_to_save``)
    are left out. A model saved through a task head (``AutoModelFor...``) nests the encoder under its
    prefix (``base_model.model.bert.encoder...``): that prefix is dropped, so such adapters import too."""
    prefix = {"bert": "bert.", "roberta": "roberta.", "xlm-roberta": "roberta.", "electra": "electra."}[base.model_type]
    out = {}
    for name in header:
        parts = name.split(".")
        if ".lora_" not in name and any(h in parts for h in heads):
            continue  # the adapter's own head: reported as ignored
        new = name.replace(f"base_model.model.{prefix}", "base_model.model.", 1)
        out[new] = name
    return out


# ----------------------------------------------------------------------------- a library on disk

@dataclass(frozen=True)
class Library:
    """An imported library (``library.json``); :func:`open_library` checks its base before any use."""

    name: str
    root: Path
    base: BaseModel
    method_config: dict
    adapters: tuple[str, ...]
    info: dict

    @property
    def paths(self) -> StudyPaths:
        """The library's sub-paths: laid out as a study's (``experts/lora/NAME``, ``predict/lora/...``)."""
        return StudyPaths(self.root)

    def expert_dirs(self) -> dict[str, str]:
        return {n: str(self.paths.expert("lora", n)) for n in self.adapters}

    def method_overrides(self) -> dict:
        """What a target's own expert is trained with, so it has the library's parameters."""
        return {k: tuple(v) if isinstance(v, list) else v for k, v in self.method_config.items()
                if k not in ("name", "lr")}


def check_base_unchanged(recorded: BaseModel, base_path: str | None = None) -> BaseModel:
    """The library's base as it is now, refused in one line if it is missing or no longer the one the
    library was imported on (by config and weight hash, not by the path string)."""
    try:
        now = inspect_base(base_path or recorded.path)
    except LibraryError as e:
        raise LibraryError(f"the library's base: {e}") from None
    if not now.same_as(recorded):
        what = "weights (sha256 of model.safetensors)" if now.weights_sha256 != recorded.weights_sha256 else "config"
        raise LibraryError(f"base model folder {now.path} is not the base the library was imported on: its {what} "
                           f"differ ({now.id} vs {recorded.id}); restore that base or import the library again")
    return now


def open_library(name: str, base_path: str | None = None, check_base: bool = True) -> Library:
    """Read a library (``library.json``, bounded) and, unless ``check_base=False`` (listing), verify
    that its base folder is still the one it was imported on."""
    check_library_name(name)
    root = libraries_dir() / name
    if not (root / LIBRARY_FILE).is_file():
        known = ", ".join(list_libraries()) or "none"
        raise LibraryError(f"no library {name!r} in {libraries_dir()} (libraries: {known}); "
                           f"import one with `pitune library import DIR --name {name}`")
    try:
        info = schema.read_json_bounded(root / LIBRARY_FILE)
        if not isinstance(info, dict) or info.get("format") != LIBRARY_FORMAT:
            raise LibraryError(f"{LIBRARY_FILE} is not a {LIBRARY_FORMAT} file")
        base = BaseModel(**info["base"])
        adapters = tuple(check_task_name(a["name"], "adapter name") for a in info["adapters"])
        mc = info["method_config"]  # checked without torch (the dashboard reads libraries too)
        r = mc["r"]
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= 1024 \
                or not set(mc["target_modules"]) <= TRUNK_MODULES:
            raise LibraryError(f"method_config {str(mc)[:120]} is not a LoRA configuration pitune imports")
    except (schema.ExpertSchemaError, KeyError, TypeError, ValueError) as e:
        raise LibraryError(f"library {name}: {LIBRARY_FILE} is damaged ({str(e)[:160]}); remove and import it again") \
            from None
    lib = Library(name, root, base, mc, adapters, info)
    if check_base:
        check_base_unchanged(base, base_path)
    return lib


def list_libraries() -> list[str]:
    root = libraries_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if not p.name.startswith(".") and (p / LIBRARY_FILE).is_file() and not p.is_symlink())


def remove_library(name: str) -> Path:
    """Delete a library (renamed aside first, so a reader never sees half of it)."""
    check_library_name(name)
    root = libraries_dir() / name
    if not (root / LIBRARY_FILE).is_file() or root.is_symlink():
        raise LibraryError(f"no library {name!r} in {libraries_dir()}")
    aside = root.with_name(f".{name}.removed-{os.getpid()}")
    os.replace(root, aside)
    shutil.rmtree(aside, ignore_errors=True)
    return root


# ----------------------------------------------------------------------------- staging an import

def check_library(src: str | Path, base: BaseModel, limits: Limits = LIMITS,
                  on_adapter: Callable[[str], None] | None = None) -> list[CheckedAdapter]:
    """Every adapter under ``src`` checked, and one rank / one set of target modules across them."""
    src = Path(src).expanduser()
    found = find_adapters(src, limits)
    if not found:
        raise LibraryError(f"no peft adapter folders ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}) under {src}")
    checked = []
    for name, folder in found:
        checked.append(check_adapter(name, folder, src.resolve(), base, limits))
        if on_adapter:
            on_adapter(name)
    for what, key in (("ranks", lambda a: f"r={a.r}"), ("target modules", lambda a: ",".join(a.target_modules))):
        groups: dict[str, list[str]] = {}
        for a in checked:
            groups.setdefault(key(a), []).append(a.name)
        if len(groups) > 1:
            shown = "; ".join(f"{', '.join(v[:3])}{' ...' if len(v) > 3 else ''} ({k})" for k, v in groups.items())
            raise LibraryError(f"mixed {what}: {shown[:300]}; a library holds one, so import them as separate libraries")
    return checked


def stage_import(src: str | Path, name: str, base_path: str | Path | None = None, replace: bool = False,
                 limits: Limits = LIMITS, on_adapter: Callable[[str], None] | None = None) -> tuple[Path, Library]:
    """Check the adapters under ``src`` on the base folder and write the library into a temporary
    folder beside its final place; returns ``(tmp, library)``. Nothing is left behind on an error.
    The caller adds predictions into ``tmp`` and then calls :func:`commit` (or :func:`abandon`)."""
    check_library_name(name)
    final = libraries_dir() / name
    if (final.exists() or final.is_symlink()) and not replace:
        raise LibraryError(f"library {name!r} already exists in {libraries_dir()}; remove it first or give --replace")
    base = inspect_base(base_path, limits)
    checked = check_library(src, base, limits, on_adapter)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(name), dir=final.parent))
    try:
        lib = _write(tmp, name, Path(src).expanduser().resolve(), base, checked)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp, lib


def _write(tmp: Path, name: str, src: Path, base: BaseModel, checked: list[CheckedAdapter]) -> Library:
    from safetensors.torch import save_file

    from pitune_core.model.experts import EXPERT_FORMAT, EXPERT_META, _versions, read_expert_meta  # lazy: loads torch

    mc = checked[0].method_config
    vmc = schema.check_method_config("lora", mc)
    paths = StudyPaths(tmp)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for a in checked:
        out = paths.expert("lora", a.name)
        out.mkdir(parents=True)
        save_file(a.tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        schema.validated_peft_config("lora", vmc, f"library-base:{base.id}").save_pretrained(str(out))  # peft's own writer
        meta = {"format": EXPERT_FORMAT, "task": a.name, "modality": "language", "method": "lora",
                "method_config": mc, "backbone_id": base.backbone_id, "metrics": {}, "versions": _versions(),
                "imported": {"library": name, "source": a.source, "alpha": a.alpha, "dropout": a.dropout,
                             "ignored_heads": a.ignored_heads, "sha256": a.sha256,
                             "note": "alpha folded into B (pitune's scaling alpha = 2r; the update is unchanged)"},
                "created": created}
        (out / EXPERT_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    info = {"format": LIBRARY_FORMAT, "name": name, "created": created, "source": str(src), "base": asdict(base),
            "method": "lora", "method_config": mc,
            "adapters": [{"name": a.name, "source": a.source, "r": a.r, "alpha": a.alpha, "dropout": a.dropout,
                          "ignored_heads": a.ignored_heads, "sha256": a.sha256} for a in checked]}
    (tmp / LIBRARY_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    lib = Library(name, tmp, base, mc, tuple(a.name for a in checked), info)
    with using_base(base):  # what was written passes pitune's own expert checks
        for d in lib.expert_dirs().values():
            read_expert_meta(d)
    return lib


def commit(tmp: Path, name: str) -> Path:
    """Move a staged library into place (replacing an older one of that name at once)."""
    final = libraries_dir() / name
    replace_dir(tmp, final)
    return final


def abandon(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
