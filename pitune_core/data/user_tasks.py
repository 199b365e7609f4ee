"""Tasks the user brings: a CSV/JSONL of texts and labels, a folder (or zip) of class folders of
images, or JSONL image-text pairs, stored in the open so they work everywhere a built-in task does.

Why a store of plain files: a target task is the whole point of transfer, and the people who have
one have it as a spreadsheet or a folder of pictures. The store keeps exactly what was given, in
forms anyone can read back without pitune: ``examples.csv`` (text tasks) or ``examples.jsonl``,
images copied byte for byte and named by their sha256, and a small ``task.json`` spec. No pickle;
each task appears complete or not at all (written in a temporary folder, then renamed).

Layout (``$PITUNE_TASKS``, default ``$XDG_DATA_HOME/pitune/tasks`` or ``~/.local/share/pitune/tasks``)::

    NAME/task.json              name, modality, labels, verbalisations, counts, sha256 of the examples
    NAME/examples.csv           text,label,split          (language tasks)
    NAME/examples.jsonl         {"image", "label", "split"[, "text"]}  (vision / vision-language)
    NAME/images/<sha256>.<ext>  the images, as given
    NAME/placed/<study id>/...  where `pitune task place` put the task on a study's graph

Everything read here is untrusted: sizes are capped before reading, text must be UTF-8, images are
decoded by Pillow with a pixel limit (decompression bombs) and must decode completely (truncated
files), zip members may not leave the archive's folder (zip-slip), claim more than the size limits
or expand beyond a sane ratio (zip bombs), and task names are safe identifiers that never clash
with a built-in task. Every problem is one clear :class:`UserTaskError` line, raised before
anything is written.

Usage::

    draft = draft_text_task("my_reviews", Path("reviews.csv").read_bytes(), "reviews.csv")
    save_task(draft)                       # -> store/my_reviews
    spec = get_task("my_reviews")          # a UserTaskSpec; .load() gives train/val/test
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Mapping

import numpy as np

from pitune_core.common import clean_stale_tmp, has_control, printable, tmp_prefix
from pitune_core.data.suite import TASKS
from pitune_core.data.taskdata import DATA_VERSION, SPLITS, Split, TaskData, TaskSpec, load_cached
from pitune_core.paths import REPO_ROOT, cache_dir, user_tasks_dir
from pitune_core.spec.vocab import MODALITIES
from pitune_core.common import NotRegularFileError, read_regular, write_atomic

TASK_FORMAT = "pitune-user-task/1"
SPEC_FILE = "task.json"
TEXT_EXAMPLES = "examples.csv"
JSONL_EXAMPLES = "examples.jsonl"
IMAGES_DIR = "images"
PLACED_DIR = "placed"
NAME_RE = re.compile(r"[a-z][a-z0-9_]{1,47}")
IMAGE_EXTS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF", ".bmp": "BMP", ".webp": "WEBP",
              ".tif": "TIFF", ".tiff": "TIFF"}
FORMAT_EXT = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "WEBP": "webp", "TIFF": "tif", "MPO": "jpg"}
_IMAGE_NAME_RE = re.compile(r"images/[0-9a-f]{64}\.(png|jpg|gif|bmp|webp|tif)")


class UserTaskError(ValueError):
    """Input that cannot become a task (the message is one line and says what to change)."""


@dataclass(frozen=True)
class Limits:
    """What the store accepts; the dashboard states these on its page."""

    max_text_bytes: int = 20 * 2**20        # one CSV / JSONL file
    max_upload_bytes: int = 100 * 2**20     # one zip archive
    max_unzipped_bytes: int = 400 * 2**20   # everything inside one zip, uncompressed
    max_zip_ratio: int = 200                # uncompressed / compressed size of one member
    max_members: int = 20_000               # files in one zip or folder
    max_image_bytes: int = 20 * 2**20       # one image file
    max_image_pixels: int = 40_000_000      # one image (width x height): decompression bombs
    max_examples: int = 20_000              # examples in one task
    max_images: int = 4_000                 # images in one task (decoded to IMAGE_SIZE² RGB)
    max_text_chars: int = 20_000            # one text
    #: classes in one task: every training step (and every example's Fisher gradient) encodes every
    #: class's verbalisation with gradients, so memory grows with the class count (a 5,000-class CSV
    #: grew a placement to 22 GB and was killed); measured at this limit: a 100-class ia3 placement
    #: peaks at 1.75 GB (the Fisher chunks are bounded by label tokens, predict.embeddings.fisher_chunks)
    max_classes: int = 100
    #: all images of one upload together, from their headers before any is decoded (pixel floods:
    #: 100 images of 40 megapixels took 31 s to decode, about 8 ms per megapixel)
    max_total_pixels: int = 2_000_000_000
    max_decoded_bytes: int = 6 * 2**30      # the same images decoded (pixels x bands x bytes per band)

    def upload_bytes(self, kind: str | None = None) -> int:
        """The largest file one upload of ``kind`` may be: a text file (``"text"``) or a zip (anything
        else); without ``kind`` the larger of the two (what the dashboard's server accepts at all)."""
        if kind is None:
            return max(self.max_text_bytes, self.max_upload_bytes)
        return self.max_text_bytes if kind == "text" else self.max_upload_bytes

    def upload_mb(self, kind: str | None = None) -> int:
        """:meth:`upload_bytes` in whole MB, rounded up (Streamlit's unit for upload sizes)."""
        return -(-self.upload_bytes(kind) // 2**20)

    def describe(self) -> str:
        mb = lambda b: f"{b / 2**20:.0f} MB"  # noqa: E731
        return (f"CSV/JSONL up to {mb(self.max_text_bytes)}; zip up to {mb(self.max_upload_bytes)} "
                f"({mb(self.max_unzipped_bytes)} unpacked, {self.max_members} files); images up to "
                f"{mb(self.max_image_bytes)} and {self.max_image_pixels / 1e6:.0f} megapixels each, at most "
                f"{self.max_images} per task and {self.max_total_pixels / 1e9:.0f} gigapixels per upload; at most "
                f"{self.max_examples} examples and {self.max_classes} classes per task")


LIMITS = Limits()
MAX_SPEC_BYTES = 4 * 2**20  # task.json (labels, verbalisations, counts)
IMAGE_SIZE = 128  # images are letterboxed to this square, the vision encoder's input size
MIN_PER_CLASS = 3  # without a test set: 1 for test, at least 2 for training (and validation)


# ----------------------------------------------------------------------------- the store

def task_store() -> Path:
    """The user task store (``$PITUNE_TASKS``, else the user's data directory); never the package."""
    root = user_tasks_dir()
    pkg = (REPO_ROOT / "pitune_core").resolve()
    if root.resolve() == pkg or root.resolve().is_relative_to(pkg):
        raise UserTaskError(f"the user task store {root} lies inside the installed package; "
                            f"set PITUNE_TASKS to a folder of your own")
    return root


def builtin_names() -> set[str]:
    return set(TASKS)


def check_name(name: str) -> str:
    """A safe, new-to-the-suite task name (lower-case letters, digits, underscores)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UserTaskError(f"task name {name!r} is not a safe identifier: use 2-48 lower-case letters, digits "
                            f"and underscores, starting with a letter (e.g. my_reviews)")
    if name in builtin_names():
        raise UserTaskError(f"task name {name!r} is a built-in task; choose another name (e.g. my_{name})")
    return name


def read_file(path: str | os.PathLike, limit: int) -> bytes:
    """A user's (or the store's) file, read by the one bounded reader (:func:`common.read_regular`):
    a FIFO, device, socket or folder is refused at once instead of hanging or filling memory."""
    try:
        return read_regular(path, limit)
    except NotRegularFileError as e:
        raise UserTaskError(str(e)) from None
    except FileNotFoundError:
        raise UserTaskError(f"{path} does not exist") from None


def _first_control(value: str) -> str:
    return next(c for c in value if has_control(c))


def task_dir(name: str) -> Path:
    return task_store() / check_name(name)


# ----------------------------------------------------------------------------- reading text

def _decode(data: bytes, where: str) -> str:
    if not data.strip():
        raise UserTaskError(f"{where} is empty")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserTaskError(f"{where} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                            f"save it as UTF-8 and try again") from None
    if not text.strip():
        raise UserTaskError(f"{where} is empty")
    return text


def _is_jsonl(filename: str, text: str) -> bool:
    ext = PurePosixPath(filename).suffix.lower()
    if ext in (".jsonl", ".ndjson", ".json"):
        return True
    if ext in (".csv", ".tsv", ".txt"):
        return False
    return text.lstrip().startswith("{")


def _column_error(where: str, what: str, col: str, have: list[str], flag: str) -> UserTaskError:
    close = difflib.get_close_matches(col, have, n=1) or [h for h in have if h.lower() == col.lower()]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    shown = ", ".join(repr(h) for h in have[:12]) or "none"
    return UserTaskError(f"{where} has no {what} column {col!r}{hint}; its columns are {shown}; "
                         f"name the right one with {flag}")


def read_records(data: bytes, filename: str, columns: Mapping[str, tuple[str, str]],
                 limits: Limits = LIMITS) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV/TSV or JSONL file as ``(line, {role: value})`` for the named columns.

    ``columns`` maps a role (``text``, ``label``, ``image``) to ``(column name, CLI flag)``.
    Values are stripped strings; an empty value is an error naming the line.
    """
    where = filename
    if len(data) > limits.max_text_bytes:
        raise UserTaskError(f"{where} is {len(data) / 2**20:.1f} MB, over the {limits.max_text_bytes / 2**20:.0f} MB "
                            f"limit for one file")
    text = _decode(data, where)
    rows: list[tuple[int, dict]] = []
    if _is_jsonl(filename, text):
        have: list[str] = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserTaskError(f"{where}, line {n}: not valid JSON ({e.msg})") from None
            except RecursionError:  # [[[[... 100,000 deep
                raise UserTaskError(f"{where}, line {n}: JSON nested too deeply to read; each line must be one "
                                    f"flat object") from None
            if not isinstance(obj, dict):
                raise UserTaskError(f"{where}, line {n}: expected a JSON object like "
                                    f"{{\"{columns.get('text', ('text',))[0]}\": ..., \"label\": ...}}")
            have = list(obj) if not have else have
            rows.append((n, obj))
            if len(rows) > limits.max_examples:
                raise UserTaskError(f"{where} has more than {limits.max_examples} examples, the limit for one task")
        if not rows:
            raise UserTaskError(f"{where} is empty")
    else:
        dialect = "excel-tab" if PurePosixPath(filename).suffix.lower() == ".tsv" else "excel"
        reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
        try:
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            start = 2
            for row in reader:
                if None in row.values() and any("\n" in str(v) for v in row.values() if v is not None):
                    # the csv module reads an unclosed quote to the end of the file as one value
                    raise UserTaskError(f"{where}, line {start}: a quoted value that opens on this line is never "
                                        f"closed (a missing '\"'?), so the rest of the file reads as one value")
                rows.append((reader.line_num, row))
                start = reader.line_num + 1
                if len(rows) > limits.max_examples:
                    raise UserTaskError(f"{where} has more than {limits.max_examples} examples, "
                                        f"the limit for one task")
        except csv.Error as e:
            raise UserTaskError(f"{where}, line {reader.line_num}: not readable as CSV ({e})") from None
        if not header:
            raise UserTaskError(f"{where} is empty")
        for role, (col, flag) in columns.items():
            if col not in header:
                raise _column_error(where, role, col, header, flag)
        if not rows:
            raise UserTaskError(f"{where} has a header but no rows")
    out = []
    for n, obj in rows:
        rec = {}
        for role, (col, flag) in columns.items():
            if col not in obj:
                raise _column_error(f"{where}, line {n},", role, col, [str(k) for k in obj], flag)
            v = obj[col]
            if isinstance(v, (dict, list)) or v is None:
                raise UserTaskError(f"{where}, line {n}: the {role} ({col!r}) must be a string, got {v!r:.40}")
            v = str(v).strip() if not isinstance(v, bool) else str(v).lower()
            if not v:
                what = "label is empty (after stripping spaces)" if role == "label" else f"{role} is empty"
                raise UserTaskError(f"{where}, line {n}: the {what}; every row needs a {role}")
            if role != "text" and has_control(v):  # ESC [2J, OSC-8 links, BEL: never stored, never printed
                raise UserTaskError(f"{where}, line {n}: the {role} {printable(v)[:60]!r} contains a control "
                                    f"character ({ascii(_first_control(v))}); remove it")
            if role == "text" and len(v) > limits.max_text_chars:
                raise UserTaskError(f"{where}, line {n}: the text has {len(v)} characters, over the "
                                    f"{limits.max_text_chars} limit")
            rec[role] = v
        out.append((n, rec))
    return out


# ----------------------------------------------------------------------------- reading images

def _letterbox(im, size: int) -> np.ndarray:
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    im = im.convert("RGB")
    im.thumbnail((size, size))
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def decode_image(data: bytes, where: str, limits: Limits = LIMITS, size: int = IMAGE_SIZE) -> tuple[str, np.ndarray]:
    """Validate one image file: ``(extension, RGB uint8 array size×size)`` or a clear error.

    Refuses files over the byte limit, images over the pixel limit (checked from the header,
    before decoding: decompression bombs), anything Pillow cannot identify, and images that do not
    decode completely (truncated or corrupt).
    """
    from PIL import Image, UnidentifiedImageError

    if len(data) > limits.max_image_bytes:
        raise UserTaskError(f"{where} is {len(data) / 2**20:.1f} MB, over the "
                            f"{limits.max_image_bytes / 2**20:.0f} MB limit for one image")
    if not data:
        raise UserTaskError(f"{where} is an empty file, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > limits.max_image_pixels:
                raise UserTaskError(f"{where} is {w}x{h} pixels, over the {limits.max_image_pixels / 1e6:.0f}-megapixel "
                                    f"limit (a decompression bomb?); shrink it first")
            fmt = im.format
            if fmt not in FORMAT_EXT:
                raise UserTaskError(f"{where} is a {fmt} image; use PNG, JPEG, GIF, BMP, WebP or TIFF")
            im.load()
            arr = _letterbox(im, size)
    except UserTaskError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserTaskError(f"{where} is too many pixels to decode safely (a decompression bomb?); "
                            f"the limit is {limits.max_image_pixels / 1e6:.0f} megapixels") from None
    except UnidentifiedImageError:
        raise UserTaskError(f"{where} is not an image Pillow can read (PNG, JPEG, GIF, BMP, WebP, TIFF)") from None
    except Exception as e:  # noqa: BLE001 - fuzzed files raise TypeError, OverflowError, struct.error, ... in Pillow
        why = " ".join(str(e).split())[:120] or type(e).__name__
        raise UserTaskError(f"{where} is truncated or corrupt ({why})") from None
    return FORMAT_EXT[fmt], arr


def _safe_member(name: str, where: str) -> PurePosixPath | None:
    """A zip member's path, or an error when it would leave the archive's folder; None to skip."""
    if "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name) or "\x00" in name:
        raise UserTaskError(f"{where} contains {name!r}, a path that leaves its folder (zip-slip); "
                            f"refusing the whole archive")
    p = PurePosixPath(name)
    if any(part == ".." for part in p.parts):
        raise UserTaskError(f"{where} contains {name!r}, a path that leaves its folder (zip-slip); "
                            f"refusing the whole archive")
    if p.parts and (p.parts[0] == "__MACOSX" or any(part.startswith(".") for part in p.parts)):
        return None
    return p


def read_zip(data: bytes, where: str, limits: Limits = LIMITS) -> dict[str, bytes]:
    """The regular files of a zip, ``{relative path: bytes}``, read in memory within the limits.

    Nothing is extracted to disk. Refuses zip-slip paths, symbolic links, too many members, and
    zip bombs (declared sizes over the limits, extreme ratios, or members larger than declared).
    """
    if len(data) > limits.max_upload_bytes:
        raise UserTaskError(f"{where} is {len(data) / 2**20:.1f} MB, over the "
                            f"{limits.max_upload_bytes / 2**20:.0f} MB upload limit")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise UserTaskError(f"{where} is not a zip archive") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise UserTaskError(f"{where} has {len(infos)} files, over the limit of {limits.max_members}")
        chosen = []
        total = 0
        for info in infos:
            p = _safe_member(info.filename, where)
            if info.is_dir() or p is None:
                continue
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise UserTaskError(f"{where} contains a symbolic link ({info.filename!r}); refusing the archive")
            total += info.file_size
            if total > limits.max_unzipped_bytes:
                raise UserTaskError(f"{where} unpacks to more than {limits.max_unzipped_bytes / 2**20:.0f} MB "
                                    f"(a zip bomb?); refusing it")
            if info.file_size > 2**20 and info.file_size > limits.max_zip_ratio * max(1, info.compress_size):
                raise UserTaskError(f"{where}: {info.filename!r} expands {info.file_size // max(1, info.compress_size)}x "
                                    f"(a zip bomb?); refusing the archive")
            chosen.append((p, info))
        out: dict[str, bytes] = {}
        for p, info in chosen:
            cap = min(info.file_size, limits.max_unzipped_bytes)
            try:
                with zf.open(info) as f:
                    blob = f.read(cap + 1)
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as e:
                raise UserTaskError(f"{where}: {info.filename!r} cannot be read ({e})") from None
            if len(blob) > cap:
                raise UserTaskError(f"{where}: {info.filename!r} is larger than its header says (a zip bomb?); "
                                    f"refusing the archive")
            out[str(p)] = blob
    return _strip_common_root(out)


def _strip_common_root(files: dict[str, bytes]) -> dict[str, bytes]:
    """``top/cls/a.png`` -> ``cls/a.png`` when everything sits in one top folder (a zipped folder)."""
    while files:
        parts = [PurePosixPath(k).parts for k in files]
        tops = {p[0] for p in parts}
        if len(tops) != 1 or any(len(p) < 3 for p in parts):
            break
        files = {str(PurePosixPath(*PurePosixPath(k).parts[1:])): v for k, v in files.items()}
    return files


def read_folder(root: Path, limits: Limits = LIMITS) -> dict[str, bytes]:
    """The regular files under ``root`` as ``{relative path: bytes}``; symlinks must stay inside."""
    root = Path(root)
    if not root.is_dir():
        raise UserTaskError(f"{root} is not a folder")
    base = root.resolve()
    out: dict[str, bytes] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            p = Path(dirpath) / fn
            rel = p.relative_to(root).as_posix()
            if PurePosixPath(rel).suffix.lower() not in IMAGE_EXTS and not rel.endswith((".jsonl", ".csv")):
                continue
            real = p.resolve()
            if not real.is_relative_to(base):
                raise UserTaskError(f"{p} points outside {root}; copy the file in instead of linking it")
            if len(out) >= limits.max_members:
                raise UserTaskError(f"{root} holds more than {limits.max_members} files; use a smaller set")
            blob = read_file(real, limits.max_image_bytes)  # regular files only: no FIFO or device
            total += len(blob)
            if total > limits.max_unzipped_bytes:
                raise UserTaskError(f"{root} holds more than {limits.max_unzipped_bytes / 2**20:.0f} MB; "
                                    f"use a smaller set")
            out[rel] = blob
    return out


def class_folder_images(files: Mapping[str, bytes], where: str) -> list[tuple[str, str, bytes]]:
    """``(class, relative path, bytes)`` for every image in one-sub-folder-per-class files."""
    out = []
    for rel in sorted(files):
        p = PurePosixPath(rel)
        if p.suffix.lower() not in IMAGE_EXTS:
            continue
        if len(p.parts) < 2:
            raise UserTaskError(f"{where}: {rel!r} is not in a class folder; put the images of each class in "
                                f"a sub-folder named after the class (e.g. cats/1.png, dogs/2.png)")
        label = p.parts[0].strip()
        if has_control(label):
            raise UserTaskError(f"{where}: the class folder {printable(label)[:60]!r} has a control character "
                                f"({ascii(_first_control(label))}) in its name; rename it")
        if not label:
            raise UserTaskError(f"{where}: {rel!r} sits in a folder whose name is empty after stripping spaces")
        out.append((label, rel, files[rel]))
    if not out:
        raise UserTaskError(f"{where} has no images (PNG, JPEG, GIF, BMP, WebP, TIFF) in class sub-folders")
    return out


# ----------------------------------------------------------------------------- drafts

@dataclass
class Example:
    label: str
    split: str  # "train" (val is carved out of train at draft time) or "test"
    text: str | None = None
    image: bytes | None = None
    image_ext: str | None = None
    where: str = ""
    shown: str = ""  # how messages name it (file and line, or archive and member)


@dataclass
class Draft:
    """A validated task that is not stored yet (what the dashboard previews)."""

    name: str
    modality: str
    labels: list[str]
    verbalizers: list[str]
    examples: list[Example]
    sources: list[str]
    test_given: bool
    seed: int = 0
    thumbnails: list[np.ndarray] = field(default_factory=list, repr=False)  # first images (preview)

    def counts(self) -> dict[str, dict[str, int]]:
        out = {s: {lab: 0 for lab in self.labels} for s in SPLITS}
        for e in self.examples:
            out[e.split][e.label] += 1
        return out

    def preview(self, n: int = 10) -> list[dict]:
        """The first ``n`` examples, taking the classes in turn (so every class shows)."""
        by = {lab: [e for e in self.examples if e.label == lab] for lab in self.labels}
        picked = [e for i in range(n) for lab in self.labels if i < len(by[lab]) for e in (by[lab][i],)][:n]
        rows = []
        for e in picked:
            r = {"label": e.label, "split": e.split}
            if e.text is not None:
                r["text"] = e.text[:200]
            if e.image is not None:
                r["image"] = e.where
            rows.append(r)
        return rows

    def max_shots(self) -> int:
        return min(self.counts()["train"].values())


def parse_verbalizers(items: Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``["pos=a glowing review", ...]`` (or a mapping) -> ``{label: text}``."""
    if not items:
        return {}
    if isinstance(items, Mapping):
        return {str(k).strip(): str(v).strip() for k, v in items.items()}
    out = {}
    for it in items:
        if "=" not in it:
            raise UserTaskError(f"verbaliser {it!r} must look like LABEL=TEXT (e.g. pos=a glowing review)")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _verbalizers(labels: list[str], given: Mapping[str, str]) -> list[str]:
    unknown = [k for k in given if k not in labels]
    if unknown:
        raise UserTaskError(f"no class {unknown[0]!r} to verbalise; the classes are {', '.join(map(repr, labels))}")
    out = []
    for lab in labels:
        v = str(given.get(lab, lab)).strip()
        if has_control(v):
            raise UserTaskError(f"the verbalisation of class {printable(lab)!r} contains a control character "
                                f"({ascii(_first_control(v))}); remove it")
        if not v:
            raise UserTaskError(f"the verbalisation of class {lab!r} is empty; give it a few words")
        if len(v) > 200:
            raise UserTaskError(f"the verbalisation of class {lab!r} is over 200 characters; keep it short")
        out.append(v)
    dup = [v for v in set(out) if out.count(v) > 1]
    if dup:
        same = [lab for lab, v in zip(labels, out) if v == dup[0]]
        raise UserTaskError(f"classes {', '.join(map(repr, same))} have the same verbalisation {dup[0]!r}; "
                            f"the model could not tell them apart")
    return out


def _assign_val(examples: list[Example], labels: list[str], seed: int) -> None:
    """Seeded, stratified split of what is not test: about 20% test (when no test set was given)
    and 10% validation per class, every class keeping at least one training example."""
    rng = np.random.default_rng(seed)
    test_given = any(e.split == "test" for e in examples)
    val_total = 0
    by_class = {lab: [e for e in examples if e.label == lab and e.split == "train"] for lab in labels}
    for lab, exs in by_class.items():
        order = [exs[i] for i in rng.permutation(len(exs))]
        n = len(order)
        n_test = 0 if test_given else max(1, int(round(0.2 * n)))
        n_val = int(round(0.1 * n))
        n_val = min(n_val, n - n_test - 1)
        for e in order[:n_test]:
            e.split = "test"
        for e in order[n_test:n_test + max(0, n_val)]:
            e.split = "val"
        val_total += max(0, n_val)
    if val_total == 0:  # tiny tasks: one validation example from the largest class that can spare one
        lab = max(labels, key=lambda c: sum(e.split == "train" for e in by_class[c]))
        train = [e for e in by_class[lab] if e.split == "train"]
        if len(train) >= 2:
            train[int(rng.integers(len(train)))].split = "val"


def _finish_draft(name: str, modality: str, examples: list[Example], sources: list[str], test_given: bool,
                  verbalizers, seed: int, limits: Limits) -> Draft:
    check_name(name)
    if len(examples) > limits.max_examples:
        raise UserTaskError(f"{len(examples)} examples is over the limit of {limits.max_examples} for one task")
    train_labels = sorted({e.label for e in examples if e.split == "train"})
    if len(train_labels) < 2:
        only = f" ({train_labels[0]!r})" if train_labels else ""
        raise UserTaskError(f"{sources[0]} has a single class{only}; a classification task needs at least two labels")
    if len(train_labels) > limits.max_classes:
        raise UserTaskError(f"{sources[0]} has {len(train_labels)} classes, over the limit of {limits.max_classes} "
                            f"per task (every training step encodes every class); merge classes or split the task")
    if test_given:
        unknown = sorted({e.label for e in examples if e.split == "test"} - set(train_labels))
        if unknown:
            raise UserTaskError(f"the test set has class {unknown[0]!r}, which the training data does not have")
    counts = {lab: sum(e.label == lab and e.split == "train" for e in examples) for lab in train_labels}
    need = 2 if test_given else MIN_PER_CLASS
    small = [lab for lab, c in counts.items() if c < need]
    if small:
        lab = min(small, key=lambda c: counts[c])
        why = "2 (for training and validation)" if test_given else f"{MIN_PER_CLASS} (1 for test, 2 for training)"
        raise UserTaskError(f"class {lab!r} has only {counts[lab]} example{'s' * (counts[lab] != 1)}; every class "
                            f"needs at least {why}")
    verbal = _verbalizers(train_labels, parse_verbalizers(verbalizers))
    _assign_val(examples, train_labels, seed)
    return Draft(name, modality, train_labels, verbal, examples, sources, test_given, seed)


def draft_text_task(name: str, data: bytes, filename: str, test: tuple[bytes, str] | None = None,
                    text_column: str = "text", label_column: str = "label", verbalizers=None, seed: int = 0,
                    limits: Limits = LIMITS) -> Draft:
    """A language task from a CSV/TSV/JSONL file (and an optional test file of the same form)."""
    check_name(name)
    cols = {"text": (text_column, "--text-column"), "label": (label_column, "--label-column")}
    examples = [Example(r["label"], "train", text=r["text"]) for _, r in read_records(data, filename, cols, limits)]
    sources = [PurePosixPath(filename).name]
    if test is not None:
        examples += [Example(r["label"], "test", text=r["text"]) for _, r in read_records(test[0], test[1], cols, limits)]
        sources.append(PurePosixPath(test[1]).name)
    return _finish_draft(name, "language", examples, sources, test is not None, verbalizers, seed, limits)


#: the preview keeps this many thumbnails of each class, and at most this many in all: a folder
#: sorted by class must not fill the preview with its first class
THUMBS_PER_CLASS = 6
MAX_THUMBS = 60


def _keep_thumb(thumbs: list, label: str, arr) -> None:
    if len(thumbs) < MAX_THUMBS and sum(lab == label for lab, _ in thumbs) < THUMBS_PER_CLASS:
        thumbs.append((label, arr))


def _image_examples(entries: list[tuple[str, str, bytes]], split: str, where: str, limits: Limits) -> list[Example]:
    out = []
    if len(entries) > limits.max_images:
        raise UserTaskError(f"{where} has {len(entries)} images, over the limit of {limits.max_images} per task")
    for label, rel, blob in entries:
        out.append(Example(label, split, image=blob, where=rel, shown=f"{where}: {rel}"))
    return out


def _bytes_per_pixel(mode: str) -> int:
    from PIL import ImageMode

    try:
        m = ImageMode.getmode(mode)
        return max(1, len(m.bands) * int(m.typestr[-1]))
    except (KeyError, ValueError, TypeError):
        return 16  # an unknown mode: assume the widest


def check_pixel_budget(blobs: Iterable[tuple[str, bytes]], limits: Limits = LIMITS) -> tuple[int, int]:
    """``(pixels, decoded bytes)`` of all images of one upload, read from their headers only (Pillow
    opens lazily), refused past :attr:`Limits.max_total_pixels` / :attr:`Limits.max_decoded_bytes`
    before any image is decoded (pixel floods); a header Pillow cannot read is left to decode_image."""
    from PIL import Image

    pixels = decoded = 0
    for shown, blob in blobs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(io.BytesIO(blob)) as im:
                    w, h = im.size
                    pixels += w * h
                    decoded += w * h * _bytes_per_pixel(im.mode)
        except Exception:  # noqa: BLE001 - reported, with its name, when decoded
            continue
        if pixels > limits.max_total_pixels or decoded > limits.max_decoded_bytes:
            raise UserTaskError(f"the images up to {shown} hold {pixels / 1e6:.0f} megapixels "
                                f"({decoded / 2**30:.1f} GB decoded), over the limit of "
                                f"{limits.max_total_pixels / 1e6:.0f} megapixels "
                                f"({limits.max_decoded_bytes / 2**30:.0f} GB) per upload; shrink the images first")
    return pixels, decoded


def _decode_images(examples: list[Example], limits: Limits) -> list:
    """Check the upload's pixel budget from the headers, then decode every image (each must decode
    completely); fills ``image_ext`` and returns the first thumbnails."""
    check_pixel_budget(((e.shown, e.image) for e in examples if e.image is not None), limits)
    thumbs: list = []
    for e in examples:
        if e.image is None:
            continue
        e.image_ext, arr = decode_image(e.image, e.shown, limits)
        _keep_thumb(thumbs, e.label, arr)  # a few of every class
    return thumbs


def _files_of(source: Path | tuple[bytes, str], limits: Limits) -> tuple[dict[str, bytes], str]:
    if isinstance(source, tuple):
        return read_zip(source[0], source[1], limits), source[1]
    p = Path(source)
    if p.suffix.lower() == ".zip" and not p.is_dir():
        return read_zip(read_file(p, limits.max_upload_bytes), str(p), limits), str(p)
    if not p.exists():
        raise UserTaskError(f"{p} does not exist")
    return read_folder(p, limits), str(p)


def draft_image_task(name: str, source: Path | tuple[bytes, str], test: Path | tuple[bytes, str] | None = None,
                     verbalizers=None, seed: int = 0, limits: Limits = LIMITS) -> Draft:
    """A vision task from a folder (or zip, given as a path or ``(bytes, filename)``) of class folders."""
    check_name(name)
    files, where = _files_of(source, limits)
    examples = _image_examples(class_folder_images(files, where), "train", where, limits)
    sources = [Path(where).name]
    if test is not None:
        tfiles, twhere = _files_of(test, limits)
        examples += _image_examples(class_folder_images(tfiles, twhere), "test", twhere, limits)
        sources.append(Path(twhere).name)
    if sum(e.image is not None for e in examples) > limits.max_images:
        raise UserTaskError(f"more than {limits.max_images} images in one task")
    thumbs = _decode_images(examples, limits)
    d = _finish_draft(name, "vision", examples, sources, test is not None, verbalizers, seed, limits)
    d.thumbnails = thumbs
    return d


def _pairs_examples(data: bytes, filename: str, get: Callable[[str], bytes], split: str, cols, limits):
    out = []
    for n, r in read_records(data, filename, cols, limits):
        rel = r["image"]
        p = PurePosixPath(rel)
        if rel.startswith("/") or "\\" in rel or re.match(r"^[A-Za-z]:", rel) or ".." in p.parts:
            raise UserTaskError(f"{filename}, line {n}: image path {rel!r} leaves the folder of {filename}")
        try:
            blob = get(str(p))
        except KeyError:
            raise UserTaskError(f"{filename}, line {n}: image {rel!r} is not there") from None
        out.append(Example(r["label"], split, text=r["text"], image=blob, where=rel,
                           shown=f"{filename}, line {n}: {rel}"))
        if len(out) > limits.max_images:
            raise UserTaskError(f"{filename} has more than {limits.max_images} images, the limit per task")
    return out


def _pairs_source(source: Path | tuple[bytes, str], limits: Limits):
    """``(jsonl bytes, jsonl name, image getter)`` for a JSONL file beside its images, or a zip holding both."""
    if isinstance(source, tuple) or Path(source).suffix.lower() == ".zip":
        files, where = _files_of(source, limits)
        jsonls = [k for k in files if k.endswith(".jsonl") and "/" not in k]
        tops = {PurePosixPath(k).parts[0] for k in files}
        if not jsonls and len(tops) == 1 and all(len(PurePosixPath(k).parts) > 1 for k in files):
            files = {str(PurePosixPath(*PurePosixPath(k).parts[1:])): v for k, v in files.items()}  # a zipped folder
            jsonls = [k for k in files if k.endswith(".jsonl") and "/" not in k]
        if len(jsonls) != 1:
            raise UserTaskError(f"{where} must hold exactly one .jsonl file at its top level (found {len(jsonls)})")
        return files[jsonls[0]], f"{Path(where).name}:{jsonls[0]}", files.__getitem__
    p = Path(source)
    data = read_file(p, limits.max_text_bytes)
    base = p.parent.resolve()

    def get(rel: str) -> bytes:
        f = (base / rel).resolve()
        if not f.is_relative_to(base):
            raise UserTaskError(f"image {rel!r} leaves the folder of {p}")
        if not f.exists():
            raise KeyError(rel)
        return read_file(f, limits.max_image_bytes)
    return data, str(p), get


def draft_pairs_task(name: str, source: Path | tuple[bytes, str], test: Path | tuple[bytes, str] | None = None,
                     image_column: str = "image", text_column: str = "text", label_column: str = "label",
                     verbalizers=None, seed: int = 0, limits: Limits = LIMITS) -> Draft:
    """A vision-language task from JSONL rows ``{"image": path, "text": ..., "label": ...}``; image paths
    are relative to the JSONL file's folder (or the zip's top level)."""
    check_name(name)
    cols = {"image": (image_column, "--image-column"), "text": (text_column, "--text-column"),
            "label": (label_column, "--label-column")}
    data, where, get = _pairs_source(source, limits)
    examples = _pairs_examples(data, where, get, "train", cols, limits)
    sources = [Path(where).name]
    if test is not None:
        tdata, twhere, tget = _pairs_source(test, limits)
        examples += _pairs_examples(tdata, twhere, tget, "test", cols, limits)
        sources.append(Path(twhere).name)
    thumbs = _decode_images(examples, limits)
    d = _finish_draft(name, "vision-language", examples, sources, test is not None, verbalizers, seed, limits)
    d.thumbnails = thumbs
    return d


def with_verbalizers(draft: Draft, verbalizers: Mapping[str, str]) -> Draft:
    """The draft with (some) verbalisations replaced, validated."""
    merged = {**dict(zip(draft.labels, draft.verbalizers)), **parse_verbalizers(verbalizers)}
    return replace(draft, verbalizers=_verbalizers(draft.labels, merged))


# ----------------------------------------------------------------------------- writing

def _sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _examples_bytes(draft: Draft) -> tuple[str, bytes]:
    if draft.modality == "language":
        buf = io.StringIO(newline="")
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["text", "label", "split"])
        for e in draft.examples:
            w.writerow([e.text, e.label, e.split])
        return TEXT_EXAMPLES, buf.getvalue().encode("utf-8")
    lines = []
    for e in draft.examples:
        rec = {"image": f"{IMAGES_DIR}/{_sha256(e.image)}.{e.image_ext}", "label": e.label, "split": e.split}
        if e.text is not None:
            rec["text"] = e.text
        lines.append(json.dumps(rec, ensure_ascii=False))
    return JSONL_EXAMPLES, ("\n".join(lines) + "\n").encode("utf-8")


def _drop_caches(name: str) -> None:
    """Forget cached data and image features of a task name (a re-added task must not reuse them)."""
    base = cache_dir(create=False)
    for p in (base / "features").rglob(f"user-{name}-*.safetensors"):  # every vision config and data version
        p.unlink(missing_ok=True)
    for p in (base / "tasks" / f"v{DATA_VERSION}" / "user").glob(f"{name}-*"):
        shutil.rmtree(p, ignore_errors=True)


def save_task(draft: Draft) -> Path:
    """Write the task to the store atomically (complete or not at all); refuses an existing name."""
    check_name(draft.name)
    store = task_store()
    store.mkdir(parents=True, exist_ok=True)
    final = store / draft.name
    if final.exists():
        raise UserTaskError(f"a user task named {draft.name!r} already exists; remove it first with "
                            f"`pitune task remove {draft.name}` or choose another name")
    clean_stale_tmp(store)  # what a killed `task add` / `task remove` left behind
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(draft.name), dir=store))
    try:
        for e in draft.examples:
            if e.image is not None:
                (tmp / IMAGES_DIR).mkdir(exist_ok=True)
                f = tmp / IMAGES_DIR / f"{_sha256(e.image)}.{e.image_ext}"
                if not f.exists():
                    f.write_bytes(e.image)
        fname, blob = _examples_bytes(draft)
        (tmp / fname).write_bytes(blob)
        counts = draft.counts()
        spec = {"format": TASK_FORMAT, "name": draft.name, "modality": draft.modality, "labels": draft.labels,
                "verbalizers": draft.verbalizers, "examples": fname, "sha256": _sha256(blob),
                "counts": counts, "num_examples": len(draft.examples), "sources": draft.sources,
                "test_given": draft.test_given, "seed": draft.seed,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=1, ensure_ascii=False), encoding="utf-8")
        _drop_caches(draft.name)
        try:
            os.rename(tmp, final)  # atomic; fails if the name appeared meanwhile
        except OSError:
            raise UserTaskError(f"a user task named {draft.name!r} already exists") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False))


def read_spec(name: str) -> dict:
    d = task_dir(name)
    f = d / SPEC_FILE
    if not f.is_file():
        raise UserTaskError(f"no user task named {name!r} in {task_store()}; add it with `pitune task add {name} ...`")
    try:
        spec = json.loads(read_file(f, MAX_SPEC_BYTES).decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise UserTaskError(f"{f} is not readable JSON ({e}); remove the task and add it again") from None
    if not isinstance(spec, dict) or spec.get("format") != TASK_FORMAT or spec.get("name") != name:
        raise UserTaskError(f"{f} is not a {TASK_FORMAT} spec for {name!r}; remove the task and add it again")
    labels, verbal = spec.get("labels"), spec.get("verbalizers")
    if (not isinstance(labels, list) or not isinstance(verbal, list) or len(labels) != len(verbal) or len(labels) < 2
            or spec.get("modality") not in MODALITIES
            or spec.get("examples") not in (TEXT_EXAMPLES, JSONL_EXAMPLES)):
        raise UserTaskError(f"{f} is malformed (labels, verbalizers, modality or examples); add the task again")
    if len(labels) > LIMITS.max_classes:
        raise UserTaskError(f"{f} has {len(labels)} classes, over the limit of {LIMITS.max_classes} per task "
                            f"(added by an older pitune?); remove the task and add it with fewer classes")
    return spec


def set_verbalizers(name: str, verbalizers) -> dict:
    """Edit verbalisations in place (atomically); earlier placements are dropped (they depended on them)."""
    spec = read_spec(name)
    merged = {**dict(zip(spec["labels"], spec["verbalizers"])), **parse_verbalizers(verbalizers)}
    spec["verbalizers"] = _verbalizers(spec["labels"], merged)
    d = task_dir(name)
    _write_json_atomic(d / SPEC_FILE, spec)
    shutil.rmtree(d / PLACED_DIR, ignore_errors=True)
    return spec


def remove_task(name: str) -> Path:
    d = task_dir(name)
    if not (d / SPEC_FILE).is_file():
        raise UserTaskError(f"no user task named {name!r} in {task_store()}")
    trash = d.with_name(f".{name}.removed-{os.getpid()}")
    os.replace(d, trash)  # disappears at once; then deleted
    shutil.rmtree(trash, ignore_errors=True)
    _drop_caches(name)
    return d


def user_task_names() -> list[str]:
    try:
        store = task_store()
    except UserTaskError:
        return []
    if not store.is_dir():
        return []
    return sorted(p.name for p in store.iterdir()
                  if NAME_RE.fullmatch(p.name) and p.name not in builtin_names() and (p / SPEC_FILE).is_file())


# ----------------------------------------------------------------------------- the task spec

@dataclass(frozen=True)
class UserTaskSpec(TaskSpec):
    """A :class:`TaskSpec` read from the store; its split is fixed in ``examples.*`` (column ``split``)."""

    root: Path | None = field(default=None, compare=False, repr=False)
    data_sha256: str = ""
    user_task: bool = True

    def cache_path(self) -> Path:
        return cache_dir() / "tasks" / f"v{DATA_VERSION}" / "user" / f"{self.name}-{self.data_sha256[:16]}"

    @property
    def feature_key(self) -> str:
        """The image-feature cache's file name: a re-added task (or another store's task of the same
        name) never reuses features of different images."""
        return f"user-{self.name}-{self.data_sha256[:16]}"

    def load(self) -> TaskData:
        return load_cached(self, self._build)

    def info(self, data: TaskData | None = None) -> dict:
        d = super().info(data)
        d["user_task"] = True
        return d

    def _build(self) -> TaskData:
        root = Path(self.root)
        blob = read_file(root / (TEXT_EXAMPLES if self.modality == "language" else JSONL_EXAMPLES),
                         LIMITS.max_text_bytes + LIMITS.max_examples * 200)  # as written, plus the split column
        if _sha256(blob) != self.data_sha256:
            raise UserTaskError(f"{root}: the examples file changed since the task was added; "
                                f"remove the task and add it again")
        index = {lab: i for i, lab in enumerate(self.labels)}
        rows: list[dict] = []
        if self.modality == "language":
            rows = list(csv.DictReader(io.StringIO(blob.decode("utf-8"), newline="")))
        else:
            rows = [json.loads(line) for line in blob.decode("utf-8").splitlines() if line.strip()]
        splits = {}
        for s in SPLITS:
            sel = [r for r in rows if r.get("split") == s]
            labels = np.array([index[r["label"]] for r in sel], dtype=np.int64)
            texts = [r["text"] for r in sel] if self.modality != "vision" else None
            images = None
            if self.modality != "language":
                ims = []
                for r in sel:
                    if not _IMAGE_NAME_RE.fullmatch(str(r.get("image", ""))):
                        raise UserTaskError(f"{root}: bad image entry {r.get('image')!r} in {JSONL_EXAMPLES}")
                    f = root / r["image"]
                    b = read_file(f, LIMITS.max_image_bytes)
                    if _sha256(b) != f.stem:
                        raise UserTaskError(f"{f} does not match its content hash; add the task again")
                    ims.append(decode_image(b, str(f))[1])
                images = np.stack(ims) if ims else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
            splits[s] = Split(labels=labels, texts=texts, images=images)
        return TaskData(self, **splits)


def _no_builder():
    raise UserTaskError("user tasks are read from the store, not built")


def load_user_task(name: str) -> UserTaskSpec:
    spec = read_spec(name)
    n = spec.get("num_examples", "?")
    return UserTaskSpec(name=name, modality=spec["modality"], labels=tuple(spec["labels"]),
                        verbalizers=tuple(spec["verbalizers"]), sources=(f"user task ({', '.join(spec.get('sources', []))})",),
                        description=f"user task: {n} examples from {', '.join(spec.get('sources', [])) or 'an upload'}",
                        builder=_no_builder, family="user", root=task_dir(name), data_sha256=spec["sha256"],
                        seed=int(spec.get("seed", 0)), max_train=10**9, max_val=10**9, max_test=10**9)


def find_user_task(name: str) -> UserTaskSpec | None:
    """The user task ``name``, or None when there is none (invalid names are simply not found)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in builtin_names():
        return None
    try:
        d = task_store() / name
    except UserTaskError:
        return None
    if not (d / SPEC_FILE).is_file():
        return None
    return load_user_task(name)


def list_user_tasks(modality: str | None = None) -> list[UserTaskSpec]:
    out = []
    for n in user_task_names():
        try:
            spec = load_user_task(n)
        except UserTaskError:
            continue
        if modality is None or spec.modality == modality:
            out.append(spec)
    return out
