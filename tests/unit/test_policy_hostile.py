"""Hostile policies: extends confinement, no echoed content, size, alias, depth and id limits."""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import PolicyError, PolicyNotFoundError
from orchestrator.policy import (
    MAX_EXTENDS_DEPTH,
    MAX_ID,
    MAX_NESTING_DEPTH,
    MAX_POLICY_FILE_BYTES,
    Filesystem,
    Mount,
    Policy,
    check_project_dir,
    load_policy,
    resolve_mounts,
)

SECRET = "SECRET-7f3a"
"""A marker in files and values that must never appear in an error message."""

BILLION_LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
    "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
    "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
    "i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n"
    "limits: {pids: *i}\n"
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def nested(levels: int, leaf: Any = "x", *, as_list: bool = False) -> Any:
    value = leaf
    for _ in range(levels):
        value = [value] if as_list else {"k": value}
    return value


def with_mount(source: str) -> dict[str, Any]:
    return {"extends": "strict", "filesystem": {"mounts": [{"source": source, "target": "/data"}]}}


def policy_error(spec: Any) -> str:
    """Load spec, expecting a PolicyError; return its message."""
    with pytest.raises(PolicyError) as info:
        load_policy(spec)
    return str(info.value)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A policy-shaped secret file outside the directory of the policies under test."""
    return write(tmp_path / "outside" / "secret.yaml", f"{SECRET}: {SECRET}\nlimits: {{pids: 9}}\n")


@pytest.fixture
def unreadable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A directory below which Path.resolve fails with EACCES, as under /proc/1/root."""
    locked = tmp_path / "locked-7f3a"
    real = Path.resolve

    def resolve(self: Path, strict: bool = False) -> Path:
        if str(self).startswith("/proc/") or locked.name in str(self):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, strict)

    monkeypatch.setattr(Path, "resolve", resolve)
    yield locked


# --------------------------------------------------------------------------- 1. extends


@pytest.mark.parametrize("spelling", ["../outside/secret.yaml", "sub/../../outside/secret.yaml"])
def test_extends_may_not_climb_out_of_its_directory(
    spelling: str, tmp_path: Path, outside: Path
) -> None:
    """`..` leaving the extending file's directory is refused, naming file and extends."""
    child = write(tmp_path / "pol" / "child.yaml", f"extends: {spelling}\n")
    message = policy_error(child)
    assert str(child) in message and "extends" in message
    assert "shipped policy" in message and "in or below" in message
    assert SECRET not in message


def test_extends_may_not_name_an_absolute_path_elsewhere(tmp_path: Path, outside: Path) -> None:
    """An absolute extends outside the file's directory (/etc/shadow, a secret) is refused."""
    for target in (outside, Path("/etc/shadow"), Path("/etc/hostname")):
        child = write(tmp_path / "pol" / "child.yaml", f"extends: {target}\n")
        message = policy_error(child)
        assert "in or below" in message and SECRET not in message


def test_extends_does_not_reveal_whether_an_outside_file_exists(
    tmp_path: Path, outside: Path
) -> None:
    """A missing and an existing outside target get the same refusal, not 'does not exist'."""
    for target in ("../outside/secret.yaml", "../outside/absent.yaml"):
        child = write(tmp_path / "pol" / "child.yaml", f"extends: {target}\n")
        with pytest.raises(PolicyError) as info:
            load_policy(child)
        assert not isinstance(info.value, PolicyNotFoundError)
        assert "does not exist" not in str(info.value)


def test_extends_through_a_symlink_pointing_out_is_refused(tmp_path: Path, outside: Path) -> None:
    """Symlinks are resolved before the check: a link (file or directory) leading out is refused."""
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "link.yaml").symlink_to(outside)
    (tmp_path / "pol" / "sub").symlink_to(outside.parent, target_is_directory=True)
    for spelling in ("link.yaml", "sub/secret.yaml"):
        child = write(tmp_path / "pol" / "child.yaml", f"extends: {spelling}\n")
        message = policy_error(child)
        assert "in or below" in message and SECRET not in message


def test_extends_may_name_files_below_its_directory(tmp_path: Path) -> None:
    """A file below the extending file's directory, or a symlink staying inside, is fine."""
    write(tmp_path / "pol" / "base" / "deep" / "parent.yaml", "limits: {pids: 99}\n")
    (tmp_path / "pol" / "alias.yaml").symlink_to(tmp_path / "pol" / "base" / "deep" / "parent.yaml")
    for spelling in ("base/deep/parent.yaml", "./base/../base/deep/parent.yaml", "alias.yaml"):
        child = write(tmp_path / "pol" / "child.yaml", f"extends: {spelling}\n")
        assert load_policy(child).limits.pids == 99


def test_a_parent_is_confined_to_its_own_directory(tmp_path: Path, outside: Path) -> None:
    """A parent below the child may not reach back up to the child's directory or beyond."""
    write(tmp_path / "pol" / "base" / "parent.yaml", "extends: ../../outside/secret.yaml\n")
    child = write(tmp_path / "pol" / "child.yaml", "extends: base/parent.yaml\n")
    message = policy_error(child)
    assert str(tmp_path / "pol" / "base" / "parent.yaml") in message
    assert SECRET not in message


@pytest.mark.parametrize("extends", ["/etc/passwd", "secret.yaml", "./secret.yaml", "a/b.yml"])
def test_a_dict_may_extend_only_shipped_names(
    extends: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dict's extends that is a path is refused, saying only shipped policies are allowed."""
    write(tmp_path / "secret.yaml", "limits: {pids: 9}\n")
    write(tmp_path / "a" / "b.yml", "limits: {pids: 9}\n")
    monkeypatch.chdir(tmp_path)
    message = policy_error({"extends": extends})
    assert "policy dict" in message and "extends" in message and "shipped policy" in message


def test_a_policy_file_given_by_path_loads_from_anywhere(tmp_path: Path, outside: Path) -> None:
    """The caller's own choice of file is not confined; only what it extends is."""
    path = write(tmp_path / "elsewhere" / "deep" / "p.yaml", "limits: {pids: 77}\n")
    assert load_policy(path).limits.pids == 77


def test_string_values_are_never_echoed(tmp_path: Path) -> None:
    """Wrong string values in a file are reported by key path only, never by their content."""
    path = write(
        tmp_path / "p.yaml",
        f"network: {{mode: {SECRET}, allowed_domains: ['{SECRET} x']}}\n"
        f"limits: {{pids: {SECRET}}}\n"
        f"runtime: {{user: {SECRET}, gvisor: {SECRET}}}\n"
        f"fallback: [{SECRET}]\n"
        f"filesystem: {{mounts: [{{source: /srv, target: {SECRET}}}]}}\n",
    )
    message = policy_error(path)
    assert SECRET not in message
    for field in ("network.mode", "network.allowed_domains", "limits.pids", "runtime.user"):
        assert field in message


def test_numbers_are_still_shown() -> None:
    """A number is echoed as the README shows: '(got 1)'."""
    message = policy_error({"limits": {"memory_mb": 1}})
    assert "limits.memory_mb: Input should be greater than or equal to 32 (got 1)" in message


def test_a_huge_number_is_not_echoed() -> None:
    """An integer too large to print is described, not printed (nor does printing it crash)."""
    message = policy_error({"limits": {"pids": 10**5000}})
    assert "too large to show" in message and len(message) < 300


def test_long_key_names_are_clipped(tmp_path: Path) -> None:
    """A 5,000-character unknown key appears clipped to 60 characters with an ellipsis."""
    path = write(tmp_path / "p.yaml", f"limits:\n  ? {'k' * 5000}\n  : 1\n")
    for spec, source in ((path, str(path)), ({"limits": {"k" * 5000: 1}}, "policy dict")):
        message = policy_error(spec)
        assert "limits." + "k" * 57 + "..." in message
        assert len(message) < len(source) + 200


def test_unknown_keys_are_listed_ten_at_most(tmp_path: Path) -> None:
    """500 unknown keys give 10 lines and 'and 490 more', not 500 lines of the file's keys."""
    path = write(tmp_path / "p.yaml", "".join(f"key{i}: 1\n" for i in range(500)))
    lines = policy_error(path).splitlines()
    assert len(lines) == 12
    assert lines[-1].strip() == "and 490 more"


def test_an_unprintable_key_cannot_forge_message_lines() -> None:
    """A key with a newline is escaped, so it cannot add a line to the message."""
    message = policy_error({"limits": {"x\n  limits.pids: fine": 1}})
    assert len(message.splitlines()) == 2


@pytest.mark.parametrize(
    "text",
    [
        f"a: !!python/name:{SECRET} x\n",
        f"a: !{SECRET}!x y\n",
        f'a: "\\{SECRET}"\n',
        f"a: b\nc: d: {SECRET}\n",
        f"a: *{SECRET}\n",
    ],
)
def test_yaml_errors_give_the_line_not_its_text(text: str, tmp_path: Path) -> None:
    """A YAML error names the file and line; the problem's quoted text of the file is removed."""
    path = write(tmp_path / "p.yaml", text)
    message = policy_error(path)
    assert str(path) in message and "invalid YAML" in message and "line " in message
    assert SECRET not in message and SECRET.lower() not in message.lower()


@pytest.mark.parametrize("text", ["a: 2020-13-45\n", f"limits: {{pids: {'9' * 5000}}}\n"])
def test_unconvertible_yaml_values_are_policy_errors(text: str, tmp_path: Path) -> None:
    """A date out of range or an int of 5,000 digits is a PolicyError, not a bare ValueError."""
    message = policy_error(write(tmp_path / "p.yaml", text))
    assert "invalid YAML" in message and "9999" not in message


def test_a_file_that_is_not_utf8_is_a_policy_error(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are refused with PolicyError naming the file."""
    path = tmp_path / "p.yaml"
    path.write_bytes(b"description: \xff\xfe\n")
    assert "UTF-8" in policy_error(path)


def test_a_fifo_is_refused_without_reading_it(tmp_path: Path) -> None:
    """A FIFO (which would block a reader forever) is refused as not a regular file."""
    os.mkfifo(tmp_path / "pipe.yaml")
    write(tmp_path / "child.yaml", "extends: pipe.yaml\n")
    for path in (tmp_path / "pipe.yaml", tmp_path / "child.yaml"):
        assert "regular file" in policy_error(path)


# --------------------------------------------------------------------------- 2. aliases, size


def test_billion_laughs_fails_fast_and_small(tmp_path: Path) -> None:
    """The billion-laughs file is refused within a second, in little memory, in a short message."""
    path = write(tmp_path / "lol.yaml", BILLION_LAUGHS)
    assert path.stat().st_size < 1024
    tracemalloc.start()
    started = time.perf_counter()
    try:
        message = policy_error(path)
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < 1.0 and peak < 10 * 1024 * 1024
    assert len(message) < len(str(path)) + 200 and len(message.encode()) < 400
    assert "aliases" in message and "not allowed in policy files" in message
    assert "line 1" in message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("limits: &l {pids: 99}\n", 1),
        ("description: x\nvalidation:\n  forbidden_imports: &m [a]\n", 3),
        ("base: {pids: 99}\nlimits:\n  <<: *base\n", 3),
    ],
)
def test_any_anchor_or_alias_is_refused(text: str, line: int, tmp_path: Path) -> None:
    """An anchor alone, or an alias (merge keys included), is refused with its line."""
    message = policy_error(write(tmp_path / "p.yaml", text))
    assert "aliases and anchors" in message and f"line {line}," in message


def test_a_policy_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    """A file one byte over 256 KiB is refused saying the limit; one at the limit loads."""
    assert MAX_POLICY_FILE_BYTES == 256 * 1024
    body = "limits: {pids: 99}\n"
    padding = MAX_POLICY_FILE_BYTES - len(body)
    at_limit = write(tmp_path / "ok.yaml", body + "#" * (padding - 1) + "\n")
    assert at_limit.stat().st_size == MAX_POLICY_FILE_BYTES
    assert load_policy(at_limit).limits.pids == 99
    over = write(tmp_path / "big.yaml", body + "#" * padding + "\n")
    message = policy_error(over)
    assert str(over) in message and "256 KiB" in message


# --------------------------------------------------------------------------- 3. depth


def extends_chain(directory: Path, length: int) -> Path:
    """Write p0.yaml extends p1.yaml ... p<length>.yaml (extends: null); return p0."""
    write(directory / f"p{length}.yaml", "extends: null\n")
    for index in range(length):
        write(directory / f"p{index}.yaml", f"extends: p{index + 1}.yaml\n")
    return directory / "p0.yaml"


def test_an_extends_chain_of_1500_files_is_refused_at_the_limit(tmp_path: Path) -> None:
    """1,500 links raise PolicyError naming the chain's start and the limit, not RecursionError."""
    start = extends_chain(tmp_path, 1500)
    message = policy_error(start)
    assert message.startswith(str(start))
    assert f"longer than {MAX_EXTENDS_DEPTH} levels" in message


def test_an_extends_chain_at_the_limit_loads(tmp_path: Path) -> None:
    """A chain of exactly MAX_EXTENDS_DEPTH links loads; one more is refused."""
    assert load_policy(extends_chain(tmp_path / "ok", MAX_EXTENDS_DEPTH)).extends == "p1.yaml"
    assert "longer than" in policy_error(extends_chain(tmp_path / "no", MAX_EXTENDS_DEPTH + 1))


@pytest.mark.parametrize(
    "spec",
    [
        {"description": nested(5000)},
        {"unknown": nested(5000)},
        {"fallback": nested(5000, "docker", as_list=True)},
        {"validation": {"forbidden_imports": nested(5000, as_list=True)}},
        {"limits": nested(5000)},
        {"extends": "strict", "network": nested(5000)},
    ],
)
def test_deep_nesting_in_a_dict_is_refused(spec: dict[str, Any]) -> None:
    """A dict nested 5,000 levels deep anywhere is a PolicyError naming its top field."""
    message = policy_error(spec)
    assert f"nested more than {MAX_NESTING_DEPTH} levels" in message
    assert next(iter(spec.keys() - {"extends"})) in message


def test_a_dict_containing_itself_is_refused() -> None:
    """A self-referential dict or list is refused as too deeply nested."""
    loop: dict[str, Any] = {}
    loop["k"] = loop
    items: list[Any] = []
    items.append(items)
    for spec in ({"limits": loop}, {"fallback": items}):
        assert "nested more than" in policy_error(spec)


@pytest.mark.parametrize(
    "value",
    ["[" * 5000 + "]" * 5000, "{a: " * 5000 + "1" + "}" * 5000, "[" * 17 + "]" * 17],
)
def test_deep_nesting_in_a_file_is_refused(value: str, tmp_path: Path) -> None:
    """A file nested 5,000 (or 17) levels deep is a PolicyError with its line, no RecursionError."""
    message = policy_error(write(tmp_path / "p.yaml", f"name: x\ndescription: {value}\n"))
    assert f"nested more than {MAX_NESTING_DEPTH} levels" in message and "line 2" in message


def test_nesting_up_to_the_limit_is_left_to_the_schema(tmp_path: Path) -> None:
    """Exactly MAX_NESTING_DEPTH levels (the top mapping included) pass the depth check."""
    deepest = nested(MAX_NESTING_DEPTH - 1, as_list=True)
    for spec in ({"description": deepest}, write(tmp_path / "p.yaml", f"description: {deepest}\n")):
        message = policy_error(spec)
        assert "description: Input should be a valid string" in message
        assert "nested" not in message


# --------------------------------------------------------------------------- 4. uid and gid


@pytest.mark.parametrize(
    "user",
    [
        "4294967296",
        "99999999999",
        "1000:4294967296",
        "2147483647",
        "1000:2147483647",
        "4294967295:1000",
        "9" * 5000,
    ],
)
def test_ids_linux_cannot_use_are_refused(user: str) -> None:
    """A uid or gid above 2147483646 is refused at load, saying the range."""
    message = policy_error({"runtime": {"user": user}})
    assert "runtime.user" in message and f"1..{MAX_ID}" in message
    assert "9" * 20 not in message


@pytest.mark.parametrize("user", ["2147483646", "2147483646:2147483646", "1", "0001000:01"])
def test_ids_up_to_the_limit_load(user: str) -> None:
    """uid and gid 1..2147483646 (leading zeros allowed) are accepted."""
    assert load_policy({"runtime": {"user": user}}).runtime.user == user


@pytest.mark.parametrize("user", ["\u0661\u0662\u0663", "\uff11\uff10\uff10\uff10", "1000:\u0667"])
def test_ids_must_be_ascii_digits(user: str) -> None:
    """Digits of other scripts (which int() accepts, Docker not) are refused."""
    assert "numeric" in policy_error({"runtime": {"user": user}})


def test_a_domain_port_must_be_ascii_digits() -> None:
    """An allowed_domains port in non-ASCII digits is refused, naming the entry by index."""
    message = policy_error({"network": {"allowed_domains": ["ok.com", "example.com:\u0668\u0660"]}})
    assert "network.allowed_domains" in message and "entry 1" in message


# --------------------------------------------------------------------------- 5. mount sources


@pytest.mark.parametrize(
    "source", ["/proc/1/root/etc", "/proc/self/cwd", "//proc/self/root", "/proc/../proc/1"]
)
def test_proc_sources_are_refused_by_their_raw_path(source: str) -> None:
    """A source under /proc is refused as such, whatever it resolves to (or fails to)."""
    message = policy_error(with_mount(source))
    assert "filesystem.mounts.0.source" in message and "inside /proc" in message


def test_proc_sources_are_refused_when_resolving_is_denied(unreadable: Path) -> None:
    """With /proc/1/root unreadable (EACCES), the source is still refused as inside /proc."""
    message = policy_error(with_mount("/proc/1/root/etc"))
    assert "inside /proc" in message
    policy = Policy(
        name="code", filesystem=Filesystem(mounts=(Mount(source="/proc/1/root", target="/d"),))
    )
    with pytest.raises(PolicyError, match=r"filesystem\.mounts\.0\.source.*inside /proc"):
        resolve_mounts(policy, Path.cwd())


def test_an_unresolvable_source_is_a_policy_error(unreadable: Path, tmp_path: Path) -> None:
    """EACCES while resolving a source is a PolicyError naming the field and the path."""
    source = str(unreadable / "data")
    message = policy_error(with_mount(source))
    assert "filesystem.mounts.0.source" in message and source in message
    assert "cannot be resolved" in message and "Permission denied" in message
    policy = Policy(name="code", filesystem=Filesystem(mounts=(Mount(source=source, target="/d"),)))
    with pytest.raises(PolicyError, match=r"'code': filesystem\.mounts\.0\.source.*resolved"):
        resolve_mounts(policy, tmp_path)


def test_a_relative_unresolvable_source_in_a_file_is_a_policy_error(
    unreadable: Path, tmp_path: Path
) -> None:
    """A relative source that cannot be resolved against its file's directory names the file."""
    path = write(
        tmp_path / "p.yaml",
        f"filesystem: {{mounts: [{{source: {unreadable.name}/d, target: /d}}]}}\n",
    )
    message = policy_error(path)
    assert str(path) in message and "filesystem.mounts.0.source" in message
    assert "cannot be resolved" in message


def test_a_symlink_loop_source_is_a_policy_error(tmp_path: Path) -> None:
    """A source through a symlink loop is a PolicyError naming the field, not RuntimeError."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    message = policy_error(with_mount(str(tmp_path / "a" / "data")))
    assert "filesystem.mounts.0.source" in message and "cannot be resolved" in message


@pytest.mark.parametrize("source", ["~no-such-user-7f3a/data", "~no-such-user-7f3a"])
def test_an_unknown_tilde_user_is_a_policy_error(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source of ~<unknown user> is a PolicyError naming the field, from a dict and a file."""
    monkeypatch.chdir(tmp_path)
    assert "filesystem.mounts.0.source" in policy_error(with_mount(source))
    path = write(
        tmp_path / "p.yaml", f"filesystem: {{mounts: [{{source: '{source}', target: /d}}]}}\n"
    )
    assert "filesystem.mounts.0.source" in policy_error(path)


def test_resolve_mounts_turns_a_failed_check_into_a_policy_error(tmp_path: Path) -> None:
    """ENAMETOOLONG from exists() in resolve_mounts is a PolicyError naming field and path."""
    source = str(tmp_path / ("n" * 300) / "data")
    policy = load_policy(with_mount(source))
    with pytest.raises(PolicyError, match=r"filesystem\.mounts\.0\.source.*cannot be checked"):
        resolve_mounts(policy, tmp_path)


def test_resolve_mounts_judges_the_raw_path() -> None:
    """A Policy built in code with /proc/self/cwd (it resolves to the cwd) is refused."""
    policy = Policy(
        name="code", filesystem=Filesystem(mounts=(Mount(source="/proc/self/cwd", target="/d"),))
    )
    with pytest.raises(PolicyError, match="inside /proc"):
        resolve_mounts(policy, Path.cwd())


def test_an_unreadable_project_dir_is_a_policy_error(unreadable: Path) -> None:
    """EACCES while resolving the project directory is a PolicyError, not PermissionError."""
    with pytest.raises(PolicyError, match=r"project directory.*cannot be resolved"):
        check_project_dir(unreadable / "project")


def test_a_lone_surrogate_in_a_policy_is_a_policy_error(tmp_path: Path) -> None:
    """Text no encoding can carry is refused at load time, from a dict or a file's escape."""
    with pytest.raises(PolicyError, match="lone surrogate"):
        load_policy({"validation": {"forbidden_imports": ["x\ud800"]}})
    path = tmp_path / "p.yaml"
    path.write_text('description: "bad \\ud800 text"\n')
    with pytest.raises(PolicyError, match="lone surrogate"):
        load_policy(path)
