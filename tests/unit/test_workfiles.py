"""Files in and out of a host workspace: the docker runner's semantics for srt, restricted, inprocess."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.backends.workfiles import MAX_DEPTH, MAX_ENTRIES, collect_outputs, write_inputs
from orchestrator.errors import RequestError
from orchestrator.models import InputFile, OutputFile
from orchestrator.run import LeftOut
from orchestrator.settings import Settings

SPECIAL = "not a regular file (a link, a FIFO, a socket): never followed"
CAP = 1024 * 1024


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A fresh workspace, with out/ as write_inputs leaves it."""
    root = tmp_path / "work"
    root.mkdir()
    write_inputs(root, ())
    return root


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A host file outside the workspace that nothing may read or write."""
    path = tmp_path / "secret.txt"
    path.write_bytes(b"host secret")
    return path


def names(found: tuple[OutputFile, ...]) -> list[str]:
    return [item.name for item in found]


# --------------------------------------------------------------------------- files in


def test_inputs_are_written_at_their_names_text_binary_and_nested(tmp_path: Path) -> None:
    """Each file lands at its relative name, byte for byte; out/ exists before the code runs."""
    binary = bytes(range(256)) * 4
    files = (
        InputFile(name="data.csv", data="a,b\n1,é\n".encode()),
        InputFile(name="deep/er/blob.bin", data=binary),
    )
    write_inputs(tmp_path, files)
    assert (tmp_path / "data.csv").read_bytes() == "a,b\n1,é\n".encode()
    assert (tmp_path / "deep" / "er" / "blob.bin").read_bytes() == binary
    assert (tmp_path / "out").is_dir() and list((tmp_path / "out").iterdir()) == []


def test_an_input_file_over_an_existing_symlink_is_refused(work: Path, secret: Path) -> None:
    """A link where a file goes is an error naming the file; its target is untouched."""
    (work / "data.csv").symlink_to(secret)
    with pytest.raises(RequestError, match=r"input file data\.csv .*links are never followed"):
        write_inputs(work, (InputFile(name="data.csv", data=b"mine"),))
    assert secret.read_bytes() == b"host secret"


def test_an_input_file_under_a_linked_directory_is_refused(work: Path, tmp_path: Path) -> None:
    """A link to a directory in a name's path is not followed: nothing is written through it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (work / "sub").symlink_to(elsewhere)
    with pytest.raises(RequestError, match=r"input file sub/x\.txt cannot be written"):
        write_inputs(work, (InputFile(name="sub/x.txt", data=b"x"),))
    assert list(elsewhere.iterdir()) == []


@pytest.mark.timeout(10)
def test_an_input_file_over_a_fifo_is_refused_without_blocking(work: Path) -> None:
    """A FIFO where a file goes is refused at once (opening it never waits for a reader)."""
    os.mkfifo(work / "pipe")
    with pytest.raises(RequestError, match="input file pipe"):
        write_inputs(work, (InputFile(name="pipe", data=b"x"),))


def test_a_directory_where_a_file_goes_is_refused(work: Path) -> None:
    """A directory in the way of a file is an error naming the file, not a silent skip."""
    (work / "taken").mkdir()
    with pytest.raises(RequestError, match="input file taken cannot be written"):
        write_inputs(work, (InputFile(name="taken", data=b"x"),))


def test_a_name_the_mode_uses_itself_is_refused(work: Path) -> None:
    """A reserved name (a mode's own parameters file) is refused before anything is written."""
    files = (InputFile(name="a.txt", data=b"a"), InputFile(name=".athena-params.json", data=b"{}"))
    with pytest.raises(RequestError, match=r"\.athena-params\.json is a name this isolation"):
        write_inputs(work, files, reserved={".athena-params.json"})
    assert not (work / "a.txt").exists()


def test_an_existing_file_is_replaced_and_out_may_hold_inputs(work: Path) -> None:
    """A file already there is overwritten; a file sent under out/ is written there too."""
    (work / "old.txt").write_bytes(b"a much longer old content")
    write_inputs(work, (InputFile(name="old.txt", data=b"new"), InputFile(name="out/x", data=b"")))
    assert (work / "old.txt").read_bytes() == b"new"
    assert (work / "out" / "x").read_bytes() == b""


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files away needs root")
def test_what_is_created_belongs_to_the_owner(tmp_path: Path) -> None:
    """With an owner, out/, the directories and files created are its (srt's run uid)."""
    write_inputs(tmp_path, (InputFile(name="d/f.txt", data=b"x"),), owner=54321)
    for path in (tmp_path / "out", tmp_path / "d", tmp_path / "d" / "f.txt"):
        assert (path.stat().st_uid, path.stat().st_gid) == (54321, 54321)


# --------------------------------------------------------------------------- files out


def test_files_come_back_sorted_with_size_sha256_and_type(work: Path) -> None:
    """Regular files, nested ones included, come back in sorted name order with their digests."""
    out = work / "out"
    (out / "b.csv").write_bytes(b"x,y\n")
    (out / "a").mkdir()
    (out / "a" / "z.png").write_bytes(b"\x89PNG")
    (out / "a" / "deeper").mkdir()
    (out / "a" / "deeper" / "n.json").write_bytes(b"{}")
    files, left = collect_outputs(work, CAP)
    assert names(files) == ["a/deeper/n.json", "a/z.png", "b.csv"]
    assert left == ()
    csv = files[2]
    assert (csv.size, csv.sha256, csv.mime_type, csv.content) == (
        4,
        hashlib.sha256(b"x,y\n").hexdigest(),
        "text/csv",
        b"x,y\n",
    )


def test_links_are_reported_and_never_followed(work: Path, secret: Path, tmp_path: Path) -> None:
    """Links to a file, to a directory and dangling ones are left out; no target is read."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "inner.txt").write_bytes(b"host secret too")
    out = work / "out"
    (out / "to_file").symlink_to(secret)
    (out / "to_dir").symlink_to(outside)
    (out / "dangling").symlink_to(tmp_path / "nothing-here")
    (out / "real.txt").write_bytes(b"ok")
    files, left = collect_outputs(work, CAP)
    assert [(f.name, f.content) for f in files] == [("real.txt", b"ok")]
    assert left == (
        LeftOut("dangling", SPECIAL),
        LeftOut("to_dir", SPECIAL),
        LeftOut("to_file", SPECIAL),
    )


def test_out_itself_as_a_link_returns_nothing(tmp_path: Path, secret: Path) -> None:
    """When out is a link (to a directory of the host), nothing is read through it."""
    (tmp_path / "out").symlink_to(secret.parent)
    assert collect_outputs(tmp_path, CAP) == ((), ())


def test_no_out_directory_returns_nothing(tmp_path: Path) -> None:
    """A workspace without out/ (the code removed it) gives no files and no error."""
    assert collect_outputs(tmp_path, CAP) == ((), ())


@pytest.mark.timeout(10)
def test_a_fifo_and_a_socket_are_left_out_without_blocking(work: Path) -> None:
    """A FIFO with no writer is never opened for a read that waits; a socket is not read."""
    os.mkfifo(work / "out" / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(work / "out" / "sock"))
        files, left = collect_outputs(work, CAP)
    assert files == ()
    assert left == (LeftOut("fifo", SPECIAL), LeftOut("sock", SPECIAL))


def test_files_past_the_cap_are_left_out_with_their_size(work: Path) -> None:
    """The cap is shared in name order: a file over what is left is reported, smaller ones fit."""
    out = work / "out"
    (out / "a.bin").write_bytes(b"a" * 60)
    (out / "b.bin").write_bytes(b"b" * 50)
    (out / "c.bin").write_bytes(b"c" * 40)
    files, left = collect_outputs(work, 100)
    assert names(files) == ["a.bin", "c.bin"]
    assert left == (LeftOut("b.bin", "over the cap", 50),)


def test_a_zero_cap_returns_empty_files_only(work: Path) -> None:
    """With a cap of 0, an empty file still comes back; any byte is over the cap."""
    (work / "out" / "empty").write_bytes(b"")
    (work / "out" / "one").write_bytes(b"1")
    files, left = collect_outputs(work, 0)
    assert names(files) == ["empty"] and left == (LeftOut("one", "over the cap", 1),)


def test_a_name_that_is_not_utf8_comes_back_escaped(work: Path) -> None:
    """Bytes of a name that are not UTF-8 become \\xNN (distinct names stay distinct), as the
    docker mode's reader does."""
    raw = os.fsencode(work / "out") + b"/caf\xe9.txt"
    with open(raw, "wb") as handle:
        handle.write(b"x")
    os.symlink(b"/etc/passwd", os.fsencode(work / "out") + b"/l\xff")
    files, left = collect_outputs(work, CAP)
    assert names(files) == ["caf\\xe9.txt"]
    assert left == (LeftOut("l\\xff", SPECIAL),)
    files[0].name.encode("utf-8")  # valid UTF-8: no lone surrogate


def test_names_sort_by_their_bytes(work: Path) -> None:
    """Order is the runner's strcmp order: by UTF-8 bytes, upper case before lower case."""
    for name in ("b", "B", "é", "a"):
        (work / "out" / name).write_bytes(b"")
    files, _ = collect_outputs(work, CAP)
    assert names(files) == ["B", "a", "b", "é"]


def test_directories_deeper_than_the_limit_are_not_walked(work: Path) -> None:
    """Files MAX_DEPTH directories down come back; one level further is not walked."""
    path = work / "out"
    for level in range(MAX_DEPTH + 1):
        path = path / f"d{level}"
        path.mkdir()
        (path / "f").write_bytes(str(level).encode())
    files, left = collect_outputs(work, CAP)
    assert len(files) == MAX_DEPTH and left == ()
    assert sorted(int(f.content) for f in files) == list(range(MAX_DEPTH))


def test_at_most_max_entries_are_looked_at(work: Path) -> None:
    """Past MAX_ENTRIES entries, the rest of out/ is not looked at (a bound on the walk)."""
    for index in range(MAX_ENTRIES + 50):
        (work / "out" / f"f{index:05}").write_bytes(b"")
    files, left = collect_outputs(work, CAP)
    assert len(files) == MAX_ENTRIES and left == ()


def test_a_file_sent_in_and_one_written_round_trip(tmp_path: Path) -> None:
    """What is written under out/ after write_inputs comes back, inputs elsewhere do not."""
    write_inputs(tmp_path, (InputFile(name="in.txt", data=b"in"),))
    (tmp_path / "out" / "result.txt").write_bytes(b"in" * 2)
    files, left = collect_outputs(tmp_path, CAP)
    assert [(f.name, f.content) for f in files] == [("result.txt", b"inin")] and left == ()


# --------------------------------------------------------------------------- the host modes


@pytest.fixture
def restricted(tmp_path: Path) -> Iterator[MemoryAPI]:
    """A MemoryAPI that runs everything in the restricted mode (no Docker)."""
    settings = Settings(project_dir=tmp_path, sandbox_backends=("restricted",))
    with MemoryAPI.create(tmp_path / "m.db", settings=settings) as api:
        yield api


def run_restricted(api: MemoryAPI, code: str, **kwargs: Any) -> dict[str, Any]:
    policy = {"extends": "strict", "validation": {"enforce": False}, "filesystem": {"tmpfs_mb": 1}}
    result = api.execute_code(code, sandbox_policy=policy, **kwargs)
    assert result["sandbox_mode"] == "restricted", result
    return result


@pytest.mark.parametrize(
    ("code", "refusal"),
    [
        ("open('/etc/passwd').read()", "PermissionError: '/etc/passwd': give a path relative"),
        ("open('../../etc/passwd').read()", "'..', '.' and empty parts are not allowed"),
        ("open('data.txt', 'w')", "files are written under out/ only"),
        ("open('out/x', 'w+')", "mode 'w+' is not allowed here"),
        ("open('out', 'w')", "files are written under out/ only"),
        ("open('data.txt').fileno()", "'_File' object has no attribute 'fileno'"),
        ("open('data.txt')._handle", '"_handle" is an invalid attribute name'),
    ],
)
def test_the_restricted_open_stays_in_the_work_directory(
    restricted: MemoryAPI, code: str, refusal: str
) -> None:
    """The restricted mode's open reads the workspace only, writes out/ only, hands out no fd."""
    r = run_restricted(restricted, code, files={"data.txt": "x"})
    assert not r["success"] and refusal in r["stderr"], r["stderr"]


def test_the_restricted_open_reads_inputs_and_writes_out(restricted: MemoryAPI) -> None:
    """Sent files are read (text, binary, lines); what is written in out/ comes back."""
    code = (
        "for line in open('in/a.txt'):\n    print(line.strip())\n"
        "print(open('in/b.bin', 'rb').read().hex())\n"
        "with open('out/r.bin', 'wb') as f:\n    f.write(b'\\x00\\x01')\n"
        "with open('out/r.bin', 'ab') as f:\n    f.write(b'\\x02')\n"
    )
    r = run_restricted(restricted, code, files={"in/a.txt": "one\ntwo\n", "in/b.bin": b"\xff"})
    assert r["success"], r["stderr"]
    assert r["stdout"] == "one\ntwo\nff\n"
    assert [(f["name"], f["content"]) for f in r["files"]] == [("r.bin", b"\x00\x01\x02")]


def test_the_restricted_writes_stop_at_the_workspace_size(restricted: MemoryAPI) -> None:
    """Writing more than filesystem.tmpfs_mb fails as a full disk would, with ENOSPC."""
    code = "f = open('out/big', 'w')\nfor i in range(3):\n    f.write('x' * 600000)\n"
    r = run_restricted(restricted, code)
    assert not r["success"] and "No space left on device" in r["stderr"], r["stderr"]


def test_a_name_a_host_mode_uses_itself_is_refused(tmp_path: Path) -> None:
    """inprocess keeps its parameters file in the workspace: a call's file may not replace it."""
    settings = Settings(project_dir=tmp_path, sandbox_backends=("inprocess",))
    refused = pytest.raises(RequestError, match=r"\.athena-params\.json is a name this isolation")
    with MemoryAPI.create(tmp_path / "m.db", settings=settings) as api, refused:
        api.execute_code(
            "echo 1", "bash", sandbox_policy="development", files={".athena-params.json": "{}"}
        )
