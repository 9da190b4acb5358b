"""athena_figures without matplotlib: its directories, its links refused, its font-list copy.

The module ships in the Python image (``images/python``); loaded here from its file. What needs
matplotlib (saving figures, the backend) runs in the image: tests/integration/test_figures_image.py.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from orchestrator.languages import images_dir

SOURCE = images_dir() / "python" / "athena_figures.py"


@pytest.fixture
def figures() -> Iterator[ModuleType]:
    """A fresh copy of the module (its figure count and directory start over)."""
    spec = importlib.util.spec_from_file_location("athena_figures_under_test", SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module


def mode_of(path: Path) -> int:
    """The permission bits of ``path`` (not following a link)."""
    return stat.S_IMODE(path.lstat().st_mode)


def test_import_loads_nothing_heavy() -> None:
    """Importing the module under ``python -I`` loads neither matplotlib nor typing."""
    script = (
        "import sys, importlib.util as u\n"
        f"s = u.spec_from_file_location('athena_figures', {str(SOURCE)!r})\n"
        "before = set(sys.modules)\n"
        "s.loader.exec_module(u.module_from_spec(s))\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert "matplotlib" not in loaded and "typing" not in loaded, loaded


def test_missing_directories_are_made_private(figures: ModuleType, tmp_path: Path) -> None:
    """open_directory makes each missing part with mode 0700 and returns the last one open."""
    target = tmp_path / "a" / "b"
    fd = figures.open_directory(str(target))
    try:
        assert os.path.samestat(os.fstat(fd), target.stat())
    finally:
        os.close(fd)
    assert mode_of(tmp_path / "a") == 0o700
    assert mode_of(target) == 0o700


@pytest.mark.parametrize("planted", ["figures", "parent"])
def test_a_planted_link_is_not_followed(figures: ModuleType, tmp_path: Path, planted: str) -> None:
    """A link we own, at the directory or above it, is refused and nothing is made beyond it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    parent = tmp_path / "parent"
    if planted == "parent":
        parent.symlink_to(elsewhere)
    else:
        parent.mkdir()
        (parent / "figures").symlink_to(elsewhere)
    with pytest.raises(figures.RefusedPath, match="symbolic link"):
        figures.open_directory(str(parent / "figures"))
    assert list(elsewhere.iterdir()) == []


def test_a_file_in_the_way_is_not_a_directory(figures: ModuleType, tmp_path: Path) -> None:
    """A regular file where a directory should be is an error, not replaced."""
    (tmp_path / "figures").write_text("x")
    with pytest.raises(NotADirectoryError):
        figures.open_directory(str(tmp_path / "figures" / "more"))
    assert (tmp_path / "figures").read_text() == "x"


def test_capture_without_pyplot_saves_nothing(figures: ModuleType, tmp_path: Path) -> None:
    """capture() when pyplot was never imported returns 0 and makes no directory."""
    assert "matplotlib.pyplot" not in sys.modules
    assert figures.capture(str(tmp_path / "figures")) == 0
    assert not (tmp_path / "figures").exists()


@pytest.fixture
def prebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A prebuilt cache (one font list and an unrelated file) and MPLCONFIGDIR to fill."""
    cache = tmp_path / "prebuilt"
    cache.mkdir()
    (cache / "fontlist-v330.json").write_text('{"_version": 330}')
    (cache / "other.txt").write_text("not copied")
    monkeypatch.setenv("ATHENA_MPL_CACHE", str(cache))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "run" / "mpl"))
    return cache


def test_prepare_copies_the_font_list(figures: ModuleType, prebuilt: Path, tmp_path: Path) -> None:
    """prepare() makes MPLCONFIGDIR (0700) and copies the font list in, a file and not a link."""
    figures.prepare()
    figures.prepare()  # the second start of a reused directory changes nothing
    config = tmp_path / "run" / "mpl"
    assert mode_of(config) == 0o700
    assert sorted(p.name for p in config.iterdir()) == ["fontlist-v330.json"]
    copied = config / "fontlist-v330.json"
    assert not copied.is_symlink()
    assert copied.read_text() == '{"_version": 330}'


def test_prepare_does_nothing_outside_the_image(
    figures: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ATHENA_MPL_CACHE (srt and inprocess modes) prepare() makes nothing."""
    monkeypatch.delenv("ATHENA_MPL_CACHE", raising=False)
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    figures.prepare()
    assert not (tmp_path / "mpl").exists()


def test_prepare_refuses_a_planted_config_dir(
    figures: ModuleType, prebuilt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A link at MPLCONFIGDIR is not followed: one line on stderr, nothing written through it."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mpl").symlink_to(victim)
    figures.prepare()
    assert list(victim.iterdir()) == []
    assert "not prepared" in capsys.readouterr().err


def test_configure_none_makes_show_do_nothing(figures: ModuleType, tmp_path: Path) -> None:
    """With capture off, show() saves nothing and makes no directory."""
    figures.configure(None)
    figures.show()
    figures.configure(str(tmp_path / "figures"))
    figures.show()  # on: still nothing, as pyplot was never imported
    assert not (tmp_path / "figures").exists()
