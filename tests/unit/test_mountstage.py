"""Staged mount sources: exactly the checked directory, bound where no sandbox can rename it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.backends.mountstage import MountStage, open_checked, sweep_stale
from orchestrator.errors import PolicyError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="binding needs root")


def test_open_checked_refuses_a_swapped_source(tmp_path: Path) -> None:
    """A source replaced by a link (or another directory) after the check is refused."""
    source = tmp_path / "sub"
    source.mkdir()
    info = source.stat()
    os.close(open_checked(str(source), info.st_dev, info.st_ino))
    source.rename(tmp_path / "old")
    (tmp_path / "elsewhere").mkdir()
    source.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PolicyError, match="cannot be opened"):
        open_checked(str(source), info.st_dev, info.st_ino)
    source.unlink()
    source.mkdir()  # same name, another directory
    with pytest.raises(PolicyError, match="replaced after the policy check"):
        open_checked(str(source), info.st_dev, info.st_ino)


@needs_root
def test_a_staged_source_stays_the_checked_directory(tmp_path: Path) -> None:
    """The staged path shows the checked directory even after its name is swapped."""
    source = tmp_path / "sub"
    source.mkdir()
    (source / "mine").write_text("checked")
    info = source.stat()
    stage = MountStage(tmp_path / "stage")
    try:
        staged = stage.stage(str(source), info.st_dev, info.st_ino)
        source.rename(tmp_path / "moved")
        (tmp_path / "decoy").mkdir()
        source.symlink_to(tmp_path / "decoy")
        assert (Path(staged) / "mine").read_text() == "checked"
        assert stage.stage(str(tmp_path / "moved"), info.st_dev, info.st_ino) != ""
    finally:
        stage.close()
    assert not Path(staged).exists()


@needs_root
def test_staged_mounts_of_a_dead_owner_are_swept(tmp_path: Path) -> None:
    """A later process removes what an owner that died left staged."""
    source = tmp_path / "sub"
    source.mkdir()
    info = source.stat()
    stage = MountStage(tmp_path / "stage")
    staged = Path(stage.stage(str(source), info.st_dev, info.st_ino))
    dead = staged.parent.with_name("999999999-0")
    staged.parent.rename(dead)  # as if its owner's pid were gone
    assert sweep_stale(tmp_path / "stage") == 1
    assert not dead.exists()


@needs_root
def test_a_stage_nobody_closed_is_removed_when_the_process_exits(tmp_path: Path) -> None:
    """The last net: a process that exits without closing its stage leaves no mount behind."""
    import subprocess
    import sys

    source = tmp_path / "sub"
    source.mkdir()
    info = source.stat()
    script = (
        "from pathlib import Path\nfrom orchestrator.backends.mountstage import MountStage\n"
        f"stage = MountStage(Path({str(tmp_path / 'stage')!r}))\n"
        f"print(stage.stage({str(source)!r}, {info.st_dev}, {info.st_ino}))\n"
        "del stage\nimport gc\ngc.collect()  # dropped, never closed"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    staged = done.stdout.strip()
    assert done.returncode == 0 and staged, done.stderr
    assert not Path(staged).exists()
    assert staged not in Path("/proc/self/mounts").read_text()
