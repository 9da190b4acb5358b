"""serve's checks before it listens: the project directory keeps no secret of the server's."""

from __future__ import annotations

from pathlib import Path

import pytest

from athena.service.serve import check_project_dir, is_loopback
from orchestrator.errors import RequestError


def test_a_store_inside_the_project_directory_is_refused(tmp_path: Path) -> None:
    """A store in (or below) the mounted project directory is refused, naming both and the fix."""
    (tmp_path / "data").mkdir()
    with pytest.raises(RequestError, match=r"the memory store .*ATHENA_PROJECT_DIR"):
        check_project_dir(tmp_path, {"the memory store": tmp_path / "data" / "memory.db"})
    link = tmp_path / "elsewhere"
    link.symlink_to(tmp_path / "data")  # a link into the project counts where it points
    with pytest.raises(RequestError, match="the tokens file"):
        check_project_dir(tmp_path / "data", {"the tokens file": link / "tokens.json"})


def test_secrets_outside_the_project_directory_pass(tmp_path: Path) -> None:
    """A store and a tokens file beside (not below) the project directory are fine."""
    project = tmp_path / "project"
    project.mkdir()
    check_project_dir(
        project,
        {"the memory store": tmp_path / "memory.db", "the tokens file": tmp_path / "t.json"},
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    """Only loopback addresses (and localhost) count as loopback."""
    assert is_loopback(host) is loopback
