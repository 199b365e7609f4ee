import io
import tarfile
import zipfile

import pytest

from pitune_core.data import sources
from pitune_core.data.sources import Source, SourceUnavailableError, fetch, iter_members, read_member


def _deb_with(files: dict[str, bytes], path):
    """Build a minimal Debian package (ar archive with data.tar.xz) for the reader to parse."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", b"x"), ("data.tar.xz", buf.getvalue())]
    with open(path, "wb") as f:
        f.write(b"!<arch>\n")
        for name, data in members:
            f.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode())
            f.write(data + (b"\n" if len(data) % 2 else b""))


def test_reads_members_of_debs_wheels_and_sdists(tmp_path):
    _deb_with({"usr/share/a.txt": b"alpha", "usr/share/b.txt": b"beta"}, tmp_path / "x.deb")
    assert read_member(tmp_path / "x.deb", "usr/share/b.txt") == b"beta"
    with zipfile.ZipFile(tmp_path / "x.whl", "w") as z:
        z.writestr("pkg/data.csv", "1,2")
    assert dict(iter_members(tmp_path / "x.whl", lambda n: n.endswith(".csv"))) == {"pkg/data.csv": b"1,2"}
    with pytest.raises(SourceUnavailableError, match="no member"):
        read_member(tmp_path / "x.whl", "pkg/missing.csv")


def test_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PITUNE_CACHE", str(tmp_path))
    src = Source("fake", "1.0", "pypi", "fake-1.0.whl", "0" * 64, 0.1, "MIT")

    def fake_download(source, dest):
        p = dest / source.filename
        p.write_bytes(b"not what was pinned")
        return p

    monkeypatch.setattr(sources, "_download", fake_download)
    with pytest.raises(SourceUnavailableError, match="checksum mismatch"):
        fetch(src)
    assert not sources.archive_path(src).exists()


def test_unreachable_registry_gives_actionable_message(tmp_path, monkeypatch):
    monkeypatch.setenv("PITUNE_CACHE", str(tmp_path))
    src = Source("pitune-no-such-package-xyz", "9.9.9", "pypi", "nope.whl", "0" * 64, 0.1, "MIT")
    with pytest.raises(SourceUnavailableError, match="place the file nope.whl"):
        fetch(src)


def test_cached_archive_is_verified_not_redownloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("PITUNE_CACHE", str(tmp_path))
    payload = b"pinned bytes"
    import hashlib

    src = Source("fake", "1.0", "pypi", "fake-1.0.whl", hashlib.sha256(payload).hexdigest(), 0.1, "MIT")
    path = sources.archive_path(src)
    path.parent.mkdir(parents=True)
    path.write_bytes(payload)
    monkeypatch.setattr(sources, "_download", lambda *a: pytest.fail("should not download"))
    assert fetch(src) == path
