"""Image definition hashes: what decides whether `make images` rebuilds."""

from __future__ import annotations

import shutil
from pathlib import Path

from orchestrator.images import definition_hash, images_dir
from orchestrator.languages import LANGUAGES


def test_hash_changes_with_a_file_and_with_the_base(tmp_path: Path) -> None:
    """Editing a file of a definition, or building it on another base, changes its hash."""
    folder = tmp_path / "bash"
    shutil.copytree(images_dir() / "bash", folder)
    before = definition_hash(folder, "base-a")
    assert definition_hash(folder, "base-a") == before
    assert definition_hash(folder, "base-b") != before
    (folder / "shboot.sh").write_text((folder / "shboot.sh").read_text() + "\n# edit\n")
    assert definition_hash(folder, "base-a") != before


def test_every_language_has_a_definition() -> None:
    """images/ holds the runner and one folder per language, each with a Dockerfile."""
    for name in ("runner", *(language.image for language in LANGUAGES)):
        assert (images_dir() / name / "Dockerfile").is_file(), name


def test_bytecode_cached_beside_a_boot_file_does_not_change_the_hash(tmp_path: Path) -> None:
    """A __pycache__ the inprocess mode's import of pyboot.py leaves is not a definition change."""
    folder = tmp_path / "python"
    shutil.copytree(images_dir() / "python", folder, ignore=shutil.ignore_patterns("__pycache__"))
    before = definition_hash(folder, "base")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "pyboot.cpython-311.pyc").write_bytes(b"\x00bytecode")
    assert definition_hash(folder, "base") == before
