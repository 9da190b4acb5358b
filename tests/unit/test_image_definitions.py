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
