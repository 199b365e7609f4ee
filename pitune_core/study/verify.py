"""Check a study directory against its manifest (the read side; nothing here writes).

``pitune verify``, the dashboard's study check and every command that reads a study
(``top-k``, ``transfer``, ``compare``) call :func:`verify_study` / :func:`require_verified`; the
pipeline writes the manifest (:func:`pitune_core.study.manifest.write_manifest`).

A study may come from someone else, so the manifest is untrusted input: it must be a JSON object
of bounded size whose ``files`` maps relative paths to sha256 hex digests. Every path is resolved
and must stay inside the study; symlinks, devices, FIFOs and files over :data:`MAX_FILE_BYTES` are
refused *before* anything is opened for hashing, so an entry like ``"../../../dev/zero"`` or
``"/etc/passwd"`` is reported, never read. Files in the study that the manifest does not list are
reported too (hidden top-level folders such as ``.stages/`` are the pipeline's bookkeeping and are
not part of the manifest, as in ``write_manifest``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path, PurePosixPath

from pitune_core.common import NotRegularFileError, read_regular
from pitune_core.paths import StudyPaths
from pitune_core.spec.vocab import EXPERT_META_FILE

#: largest manifest.json read (the shipped one is ~30 KB)
MAX_MANIFEST_BYTES = 16 << 20
#: largest single study file hashed (the largest shipped file is ~7 MB)
MAX_FILE_BYTES = 1 << 30
#: most files a manifest may list
MAX_FILES = 100_000
SHA256_RE = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """A manifest.json that is not a pitune manifest (not JSON, wrong shape, hostile paths)."""


def _rebuild(root: Path) -> str:
    return f"`pitune precompute --out {root}`"


def confined_path(root: str | os.PathLike, rel: object, what: str = "path") -> Path:
    """``root / rel`` if ``rel`` is a relative path that stays inside ``root``; else ``ManifestError``.

    Refuses absolute paths, ``..`` components, empty / NUL-containing names, and any path whose
    resolution (following symlinks) leaves ``root`` or passes through a symlink.
    """
    if not isinstance(rel, str) or not rel or "\x00" in rel or len(rel) > 4096:
        raise ManifestError(f"{what} {rel!r} is not a relative file name")
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and pure.parts[0].endswith(":")):
        raise ManifestError(f"{what} {rel!r} points outside the study (absolute or '..')")
    root = Path(root)
    p = root.joinpath(*pure.parts)
    # no component may be a symlink (a link inside the study could point anywhere)
    cur = root
    for part in pure.parts:
        cur = cur / part
        if cur.is_symlink():
            raise ManifestError(f"{what} {rel!r} is a symbolic link (refused: study files must be regular files)")
    try:
        real_root = root.resolve(strict=True)
        real = p.resolve()
    except (OSError, RuntimeError) as e:
        raise ManifestError(f"{what} {rel!r} cannot be resolved ({e})") from None
    if real != real_root and not real.is_relative_to(real_root):
        raise ManifestError(f"{what} {rel!r} resolves outside the study")
    return p


def sha256_regular(path: Path, max_bytes: int = MAX_FILE_BYTES) -> str:
    """sha256 of a regular file, opened without following links or blocking; refuses anything else.

    Raises ``ManifestError`` for a symlink, device, FIFO, socket or directory, or a file over
    ``max_bytes`` (checked on the opened descriptor, so the check and the read see one file).
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise ManifestError(f"{path.name}: cannot be opened ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ManifestError(f"{path.name} is not a regular file (refused)")
        if st.st_size > max_bytes:
            raise ManifestError(f"{path.name} is {st.st_size} bytes, over the {max_bytes}-byte limit")
        h = hashlib.sha256()
        left = max_bytes + 1
        while block := os.read(fd, min(1 << 20, left)):
            h.update(block)
            left -= len(block)
            if left <= 0:
                raise ManifestError(f"{path.name} grew past the {max_bytes}-byte limit while being read")
        return h.hexdigest()
    finally:
        os.close(fd)


def read_manifest(root: str | os.PathLike) -> dict:
    """The parsed, shape-checked manifest of a study; ``ManifestError`` (one line) if malformed.

    ``FileNotFoundError`` if there is none.
    """
    root = Path(root)
    path = StudyPaths(root).manifest
    if path.is_symlink():
        raise ManifestError(f"{path} is a symbolic link (refused)")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the study is incomplete. Rebuild it with {_rebuild(root)} "
                                f"(resumes where it stopped).")
    try:
        raw = read_regular(path, MAX_MANIFEST_BYTES, follow_symlinks=False)  # no FIFO, device or link
    except NotRegularFileError as e:
        raise ManifestError(str(e)) from None
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ManifestError(f"{path} is not valid JSON ({str(e)[:200]}); rebuild the study with {_rebuild(root)}") \
            from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path} must be a JSON object, got {type(manifest).__name__}; rebuild the study with "
                            f"{_rebuild(root)}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ManifestError(f"{path}: 'files' must be an object mapping paths to sha256 digests, got "
                            f"{type(files).__name__}; rebuild the study with {_rebuild(root)}")
    if len(files) > MAX_FILES:
        raise ManifestError(f"{path} lists {len(files)} files, over the limit of {MAX_FILES}")
    for rel, digest in files.items():
        if not isinstance(digest, str) or not SHA256_RE.fullmatch(digest):
            raise ManifestError(f"{path}: the digest of {str(rel)[:100]!r} is not a sha256 hex string "
                                f"({str(digest)[:40]!r}); rebuild the study with {_rebuild(root)}")
    return manifest


def _unlisted(root: Path, listed: set[str]) -> list[str]:
    """Problems for files / links in the study that the manifest does not list."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        rel_d = d.relative_to(root)
        if rel_d == Path("."):
            dirnames[:] = [n for n in dirnames if not n.startswith(".")]
            filenames = [n for n in filenames if not n.startswith(".") and n != "manifest.json"]
        for n in sorted(dirnames):
            if (d / n).is_symlink():
                out.append(f"symbolic link (refused): {(rel_d / n).as_posix()}")
        dirnames[:] = sorted(n for n in dirnames if not (d / n).is_symlink())
        for n in sorted(filenames):
            rel = (rel_d / n).as_posix()
            if (d / n).is_symlink():
                out.append(f"symbolic link (refused): {rel}")
            elif rel not in listed:
                out.append(f"not in the manifest: {rel}")
    return out


def verify_study(root: str | os.PathLike, load_experts: bool = True) -> list[str]:
    """Problems with a study directory (empty list: all good). Never reads outside ``root``."""
    root = Path(root)
    if not root.is_dir():
        return [f"{root} is not a directory"]
    try:
        manifest = read_manifest(root)
    except FileNotFoundError as e:
        return [str(e)]
    except (ManifestError, OSError) as e:
        return [str(e)]
    problems = []
    listed: set[str] = set()
    for rel, digest in manifest["files"].items():
        try:
            p = confined_path(root, rel, "manifest entry")
        except ManifestError as e:
            problems.append(str(e))
            continue
        listed.add(PurePosixPath(rel.replace("\\", "/")).as_posix())
        if not os.path.lexists(p):
            problems.append(f"missing: {rel}")
            continue
        try:
            if sha256_regular(p) != digest:
                problems.append(f"corrupt (sha256 mismatch): {rel}")
        except ManifestError as e:
            problems.append(f"{rel}: {e}")
    problems += _unlisted(root, listed)
    if load_experts and not problems:
        from pitune_core.model.backbone import UnifiedBackbone  # lazy: loads torch
        from pitune_core.model.experts import load_expert  # lazy: loads torch

        try:
            bb = UnifiedBackbone.load(StudyPaths(root).backbone)
        except Exception as e:  # noqa: BLE001 - report, don't crash
            return problems + [f"backbone does not load: {e}"]
        for meta in sorted(StudyPaths(root).experts.rglob(EXPERT_META_FILE)):
            try:
                model, _ = load_expert(meta.parent, bb)
                del model
            except Exception as e:  # noqa: BLE001 - any failure means "does not load"
                problems.append(f"expert {meta.parent.relative_to(root)} does not load: {e}")
    return problems


def require_verified(root: str | os.PathLike, command: str = "this command") -> Path:
    """Refuse (``ValueError``, one line with the rebuild command) a study that fails its manifest check.

    Cheap: hashes the study's files once (about 0.1 s for the shipped 34 MB study) and loads no expert.
    """
    root = Path(root)
    problems = verify_study(root, load_experts=False)
    if problems:
        more = f" (and {len(problems) - 1} more; see `pitune verify {root}`)" if len(problems) > 1 else ""
        raise ValueError(f"{command} refuses study {root}: {problems[0]}{more}. Rebuild it with "
                         f"{_rebuild(root)}, or point --study / PITUNE_STUDY at a verified study.")
    return root
