"""Unit tests of policy loading: shipped policies, files, dicts, extends, checks and mounts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import PolicyError, PolicyNotFoundError, SandboxError
from orchestrator.policy import (
    PROJECT_DIR_TOKEN,
    Filesystem,
    Mount,
    Policy,
    ResolvedMount,
    load_policy,
    resolve_mounts,
    shipped_policy_names,
)

REPO_POLICIES = Path(__file__).resolve().parents[2] / "policies"
STRICT_FORBIDDEN_IMPORTS = (
    "subprocess",
    "socket",
    "ctypes",
    "pty",
    "multiprocessing",
    "importlib",
    "pickle",
    "marshal",
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def strict_with(**sections: Any) -> dict[str, Any]:
    return {"extends": "strict", **sections}


def with_mount(source: str, target: str = "/data", read_only: bool = True) -> dict[str, Any]:
    mount = {"source": source, "target": target, "read_only": read_only}
    return strict_with(filesystem={"mounts": [mount]})


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake home directory, tmp_path/home/me, so home checks never depend on the real one."""
    directory = tmp_path / "home" / "me"
    directory.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(directory))
    assert Path.home() == directory
    return directory


# --------------------------------------------------------------------------- shipped policies


def test_shipped_policy_names_are_the_files_in_policies() -> None:
    """shipped_policy_names() lists exactly the YAML files of policies/, sorted."""
    files = sorted(p.stem for p in REPO_POLICIES.glob("*.yaml"))
    assert files == ["development", "research", "strict", "strict-fast", "strict-gvisor"]
    assert shipped_policy_names() == files


@pytest.mark.parametrize("name", sorted(p.stem for p in REPO_POLICIES.glob("*.yaml")))
def test_every_shipped_policy_loads(name: str) -> None:
    """Each shipped policy file loads into a Policy carrying its own name."""
    assert load_policy(name).name == name


def test_strict_isolates_and_forbids_dangerous_modules_and_calls() -> None:
    """strict has no network, a read-only root, and forbids process/socket/native/eval tricks."""
    strict = load_policy("strict")
    assert strict.network.mode == "none"
    assert strict.filesystem.read_only_root is True
    assert strict.filesystem.mounts == ()
    assert strict.validation.enforce is True
    assert set(STRICT_FORBIDDEN_IMPORTS) <= set(strict.validation.forbidden_imports)
    assert {"eval", "exec", "compile", "__import__"} <= set(strict.validation.forbidden_calls)
    assert strict.fallback == ("docker", "srt", "restricted")


@pytest.mark.parametrize("module", ["os", "math", "json"])
def test_strict_does_not_forbid_everyday_modules(module: str) -> None:
    """strict leaves everyday modules such as os, math and json importable."""
    assert module not in load_policy("strict").validation.forbidden_imports


def test_research_extends_strict_with_read_only_project_and_more_memory() -> None:
    """research keeps strict's rules, mounts ${project_dir} read-only, more memory, the allowlist."""
    strict, research = load_policy("strict"), load_policy("research")
    assert research.extends == "strict"
    assert research.filesystem.mounts == (
        Mount(source=PROJECT_DIR_TOKEN, target="/project", read_only=True),
    )
    assert research.limits.memory_mb > strict.limits.memory_mb
    assert research.network.mode == "allowlist"
    assert research.network.allowed_domains == (
        "pypi.org",
        "files.pythonhosted.org",
        "registry.npmjs.org",
        "github.com",
        "api.github.com",
    )
    assert research.validation == strict.validation


def test_development_extends_research_with_network_and_writable_project() -> None:
    """development opens the network, mounts the project read-write and forbids no imports."""
    research, development = load_policy("research"), load_policy("development")
    assert development.extends == "research"
    assert development.network.mode == "open"
    assert development.filesystem.mounts == (
        Mount(source=PROJECT_DIR_TOKEN, target="/project", read_only=False),
    )
    assert development.validation.forbidden_imports == ()
    assert development.filesystem.tmpfs_mb == research.filesystem.tmpfs_mb  # inherited


# --------------------------------------------------------------------------- what a spec is


def test_none_is_strict() -> None:
    """load_policy(None) gives the strict policy."""
    assert load_policy(None) == load_policy("strict")


def test_a_bare_name_is_shipped_even_when_a_file_of_that_name_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A string without '/' or a YAML suffix names a shipped policy, not a file in cwd."""
    write(tmp_path / "strict", "name: impostor\n")
    monkeypatch.chdir(tmp_path)
    assert load_policy("strict").name == "strict"


@pytest.mark.parametrize("spec", ["mine.yaml", "mine.yml", "sub/mine", "./sub/mine"])
def test_a_string_with_slash_or_yaml_suffix_is_a_path_relative_to_cwd(
    spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A string containing '/' or ending in .yaml/.yml is read as a file relative to cwd."""
    write(tmp_path / spec, "limits: {memory_mb: 512}\n")
    monkeypatch.chdir(tmp_path)
    policy = load_policy(spec)
    assert policy.limits.memory_mb == 512
    assert policy.name == Path(spec).stem


def test_a_path_object_is_a_path(tmp_path: Path) -> None:
    """An os.PathLike is read as a file whatever its name."""
    path = write(tmp_path / "strict", "name: from-file\n")
    assert load_policy(path).name == "from-file"


def test_a_missing_policy_file_is_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path to no file raises PolicyNotFoundError naming that file."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PolicyNotFoundError, match="does not exist") as info:
        load_policy("nowhere.yaml")
    assert str(tmp_path / "nowhere.yaml") in str(info.value)


def test_a_dict_is_a_policy() -> None:
    """A dict is validated like a file; without a name it is called 'custom'."""
    policy = load_policy({"limits": {"memory_mb": 512}})
    assert policy.name == "custom"
    assert policy.limits.memory_mb == 512
    assert load_policy({"name": "mine"}).name == "mine"


def test_a_dict_may_extend_a_shipped_policy() -> None:
    """A dict with extends: strict inherits strict's fields and overrides its own."""
    policy = load_policy(strict_with(limits={"pids": 100}))
    strict = load_policy("strict")
    assert policy.limits.pids == 100
    assert policy.limits.memory_mb == strict.limits.memory_mb
    assert policy.validation == strict.validation


def test_a_policy_instance_passes_through() -> None:
    """A Policy is returned as it is."""
    policy = Policy(name="given")
    assert load_policy(policy) is policy


def test_a_spec_of_another_type_is_a_policy_error() -> None:
    """A spec that is neither name, path, dict nor Policy raises PolicyError."""
    with pytest.raises(PolicyError, match="int"):
        load_policy(42)  # type: ignore[arg-type]


def test_a_list_spec_is_a_policy_error() -> None:
    """A list (even one whose text contains '/') raises PolicyError, not TypeError."""
    with pytest.raises(PolicyError):
        load_policy(["policies/strict.yaml"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- extends


def test_extends_merges_mappings_deeply(tmp_path: Path) -> None:
    """A child's mapping overrides only the keys it names; the parent's other keys stay."""
    write(tmp_path / "parent.yaml", "limits: {memory_mb: 512, pids: 100}\nnetwork: {mode: open}\n")
    child = write(tmp_path / "child.yaml", "extends: parent.yaml\nlimits: {pids: 200}\n")
    policy = load_policy(child)
    assert (policy.limits.memory_mb, policy.limits.pids) == (512, 200)
    assert policy.network.mode == "open"
    assert policy.name == "child"
    assert policy.extends == "parent.yaml"


def test_extends_replaces_lists(tmp_path: Path) -> None:
    """A child's list (mounts, forbidden_imports) replaces the parent's list entirely."""
    write(
        tmp_path / "parent.yaml",
        "filesystem:\n"
        "  mounts:\n"
        "    - {source: /srv/a, target: /a}\n"
        "    - {source: /srv/b, target: /b}\n"
        "validation: {forbidden_imports: [x, y]}\n",
    )
    child = write(
        tmp_path / "child.yaml",
        "extends: parent.yaml\n"
        "filesystem:\n"
        "  mounts: [{source: /srv/c, target: /c}]\n"
        "validation: {forbidden_imports: [z]}\n",
    )
    policy = load_policy(child)
    assert policy.filesystem.mounts == (Mount(source="/srv/c", target="/c"),)
    assert policy.validation.forbidden_imports == ("z",)


def test_extends_is_relative_to_the_file_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative extends is looked up beside the file that says it (here: below it)."""
    write(tmp_path / "children" / "base" / "parent.yaml", "limits: {memory_mb: 777}\n")
    child = write(tmp_path / "children" / "child.yaml", "extends: base/parent.yaml\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_policy(child).limits.memory_mb == 777


def test_extends_may_name_a_shipped_policy(tmp_path: Path) -> None:
    """extends: strict in a file inherits the shipped strict policy."""
    child = write(tmp_path / "mine.yaml", "extends: strict\nlimits: {pids: 99}\n")
    policy = load_policy(child)
    assert policy.limits.pids == 99
    assert policy.validation == load_policy("strict").validation


def test_mount_sources_are_relative_to_their_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative mount source is made absolute against the file's directory, not cwd."""
    policy_file = write(
        tmp_path / "pol" / "p.yaml", "filesystem: {mounts: [{source: data, target: /data}]}\n"
    )
    monkeypatch.chdir(tmp_path)
    mount = load_policy(policy_file).filesystem.mounts[0]
    assert mount.source == str((tmp_path / "pol" / "data").resolve())


def test_an_inherited_relative_mount_keeps_its_own_base(tmp_path: Path) -> None:
    """A relative source in a parent file stays relative to the parent's directory."""
    write(
        tmp_path / "child" / "base" / "parent.yaml",
        "filesystem: {mounts: [{source: data, target: /data}]}\n",
    )
    child = write(tmp_path / "child" / "c.yaml", "extends: base/parent.yaml\n")
    mount = load_policy(child).filesystem.mounts[0]
    assert mount.source == str((tmp_path / "child" / "base" / "data").resolve())


def test_a_dict_mount_source_is_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a dict policy a relative mount source is relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    mount = load_policy(with_mount("data")).filesystem.mounts[0]
    assert mount.source == str((tmp_path / "data").resolve())


@pytest.mark.parametrize("source", [PROJECT_DIR_TOKEN, f"{PROJECT_DIR_TOKEN}/sub"])
def test_project_dir_token_is_kept_until_resolve(source: str, tmp_path: Path) -> None:
    """${project_dir} sources are neither made absolute nor checked when loading."""
    policy_file = write(
        tmp_path / "p.yaml", f'filesystem: {{mounts: [{{source: "{source}", target: /project}}]}}\n'
    )
    assert load_policy(policy_file).filesystem.mounts[0].source == source
    assert load_policy(with_mount(source)).filesystem.mounts[0].source == source


def test_an_extends_cycle_of_two_files_is_an_error(tmp_path: Path) -> None:
    """a extends b extends a raises PolicyError mentioning the cycle."""
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    a = write(tmp_path / "a.yaml", "extends: b.yaml\n")
    with pytest.raises(PolicyError, match="cycle") as info:
        load_policy(a)
    assert not isinstance(info.value, PolicyNotFoundError)


def test_a_file_extending_itself_is_a_cycle(tmp_path: Path) -> None:
    """a extends a raises PolicyError mentioning the cycle."""
    a = write(tmp_path / "a.yaml", "extends: a.yaml\n")
    with pytest.raises(PolicyError, match="cycle"):
        load_policy(a)


def test_a_missing_parent_file_names_the_child(tmp_path: Path) -> None:
    """A parent path that does not exist raises PolicyNotFoundError naming the child file."""
    child = write(tmp_path / "child.yaml", "extends: missing.yaml\n")
    with pytest.raises(PolicyNotFoundError) as info:
        load_policy(child)
    message = str(info.value)
    assert str(child.resolve()) in message
    assert "extends" in message
    assert "missing.yaml" in message


def test_a_missing_shipped_parent_names_the_child(tmp_path: Path) -> None:
    """extends: <unknown name> raises PolicyNotFoundError naming the child file."""
    child = write(tmp_path / "child.yaml", "extends: nosuch\n")
    with pytest.raises(PolicyNotFoundError) as info:
        load_policy(child)
    assert str(child.resolve()) in str(info.value)


# --------------------------------------------------------------------------- helpful errors


def test_an_unknown_key_names_file_field_and_problem(tmp_path: Path) -> None:
    """A misspelt key is refused with the file path, the dotted field and 'unknown key'."""
    path = write(tmp_path / "typo.yaml", "limits: {memory: 5}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    message = str(info.value)
    assert str(path) in message
    assert "limits.memory" in message
    assert "unknown key" in message


def test_an_out_of_range_value_names_the_field(tmp_path: Path) -> None:
    """memory_mb: 0 is refused naming limits.memory_mb, the bound and the value given."""
    path = write(tmp_path / "zero.yaml", "limits: {memory_mb: 0}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    message = str(info.value)
    assert str(path) in message
    assert "limits.memory_mb" in message
    assert "32" in message
    assert "got 0" in message


def test_a_wrong_type_names_the_field() -> None:
    """A value of the wrong type is refused naming its field."""
    with pytest.raises(PolicyError, match=r"limits\.pids"):
        load_policy({"limits": {"pids": "many"}})


def test_a_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """Invalid YAML is refused with the file path and the line of the problem."""
    path = write(tmp_path / "tab.yaml", "name: x\nlimits:\n\tmemory_mb: 5\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    message = str(info.value)
    assert str(path) in message
    assert "invalid YAML" in message
    assert "line 3" in message


def test_a_top_level_list_is_refused(tmp_path: Path) -> None:
    """A policy file must be a mapping; a list is refused naming the file."""
    path = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(PolicyError, match="mapping") as info:
        load_policy(path)
    assert str(path) in str(info.value)


def test_an_unknown_shipped_name_lists_the_shipped_names() -> None:
    """An unknown name raises PolicyNotFoundError (a LookupError and ValueError) listing names."""
    with pytest.raises(PolicyNotFoundError) as info:
        load_policy("nosuch")
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, ValueError)
    assert "development, research, strict" in str(info.value)


def test_policy_errors_belong_to_the_error_tree() -> None:
    """PolicyError is a ValueError and a SandboxError; PolicyNotFoundError is a PolicyError."""
    assert issubclass(PolicyError, ValueError)
    assert issubclass(PolicyError, SandboxError)
    assert issubclass(PolicyNotFoundError, PolicyError)
    assert issubclass(PolicyNotFoundError, LookupError)


# --------------------------------------------------------------------------- unsupported, fields


def test_network_allowlist_takes_domains() -> None:
    """network.mode allowlist loads with its domains (lower-cased, ports kept)."""
    policy = load_policy(
        strict_with(network={"mode": "allowlist", "allowed_domains": ["PyPI.org", "*.x.io:8443"]})
    )
    assert policy.network.mode == "allowlist"
    assert policy.network.allowed_domains == ("pypi.org", "*.x.io:8443")


@pytest.mark.parametrize("mode", ["never", "prefer", "require"])
def test_gvisor_modes_load(mode: str) -> None:
    """runtime.gvisor takes never, prefer and require; strict-gvisor requires it, docker only."""
    assert load_policy(strict_with(runtime={"gvisor": mode})).runtime.gvisor == mode
    gvisor = load_policy("strict-gvisor")
    assert gvisor.runtime.gvisor == "require" and gvisor.fallback == ("docker",)


@pytest.mark.parametrize(
    "entry", ["example.com", "*.example.com", "api.example.com:8443", "localhost", "a-b.c1.io:1"]
)
def test_allowed_domain_entries_accept_hosts_wildcards_and_ports(entry: str) -> None:
    """Hosts, *.suffix wildcards and host:port are valid allowed_domains entries."""
    policy = load_policy({"network": {"allowed_domains": [entry]}})
    assert policy.network.allowed_domains == (entry,)


def test_allowed_domains_are_lower_cased() -> None:
    """allowed_domains entries are stored in lower case."""
    policy = load_policy({"network": {"allowed_domains": ["API.Example.COM"]}})
    assert policy.network.allowed_domains == ("api.example.com",)


@pytest.mark.parametrize(
    "entry", ["http://x", "a b", "x:70000", "x:0", "example.com/path", "", "*.", "exa_mple.com"]
)
def test_malformed_allowed_domains_are_refused(entry: str) -> None:
    """URLs, spaces, out-of-range ports and other non-hosts are refused naming the field."""
    with pytest.raises(PolicyError, match=r"network\.allowed_domains"):
        load_policy({"network": {"allowed_domains": [entry]}})


@pytest.mark.parametrize(
    "section",
    [{"network": {"allowed_domains": ["example.com\n"]}}, {"runtime": {"user": "1000\n"}}],
)
def test_a_trailing_newline_is_refused(section: dict[str, Any]) -> None:
    """A domain entry or user with a trailing newline is refused."""
    with pytest.raises(PolicyError):
        load_policy(section)


@pytest.mark.parametrize("user", ["0", "0:0", "1000:0", "0:1000", "00"])
def test_runtime_user_refuses_root(user: str) -> None:
    """A uid or gid of 0 is refused: the sandbox never runs as root."""
    with pytest.raises(PolicyError, match="root"):
        load_policy({"runtime": {"user": user}})


@pytest.mark.parametrize("user", ["root", "nobody", "1000:abc", "-1", "1000:", " 1000"])
def test_runtime_user_refuses_non_numeric(user: str) -> None:
    """A user that is not 'uid' or 'uid:gid' with numeric ids is refused naming the field."""
    with pytest.raises(PolicyError, match=r"runtime\.user.*numeric"):
        load_policy({"runtime": {"user": user}})


def test_runtime_user_gives_uid_and_gid() -> None:
    """uid and gid come from 'uid:gid'; a lone uid is also the gid."""
    assert (load_policy({"runtime": {"user": "1000:2000"}}).runtime.gid) == 2000
    runtime = load_policy({"runtime": {"user": "1234"}}).runtime
    assert (runtime.uid, runtime.gid) == (1234, 1234)


def test_shipped_fallbacks_follow_the_issue() -> None:
    """strict and research accept docker, srt, restricted; development accepts all four."""
    assert load_policy("research").fallback == ("docker", "srt", "restricted")
    assert load_policy("development").fallback == ("docker", "srt", "restricted", "inprocess")


def test_fallback_is_sorted_strongest_first() -> None:
    """fallback modes are reordered from the strongest isolation to the weakest."""
    policy = load_policy({"fallback": ["inprocess", "restricted", "docker", "srt"]})
    assert policy.fallback == ("docker", "srt", "restricted", "inprocess")


@pytest.mark.parametrize(
    ("fallback", "expected"),
    [([], "at least one"), (["docker", "docker"], "once"), (["vm"], "fallback")],
)
def test_fallback_refuses_empty_duplicate_and_unknown(fallback: list[str], expected: str) -> None:
    """An empty fallback, a repeated mode or an unknown mode is refused."""
    with pytest.raises(PolicyError, match=expected):
        load_policy({"fallback": fallback})


# --------------------------------------------------------------------------- mount targets


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/usr",
        "/usr/local",
        "/etc",
        "/proc",
        "/tmp",
        "/tmp/x",
        "/workspace",
        "/workspace/",
        "/opt/athena",
        "/opt/athena/runner",
    ],
)
def test_mount_targets_the_sandbox_needs_are_refused(target: str) -> None:
    """A target that would cover a system or sandbox directory is refused naming the field."""
    with pytest.raises(PolicyError, match=r"filesystem\.mounts\.0\.target.*would cover"):
        load_policy(with_mount("/srv/data", target))


@pytest.mark.parametrize("target", ["data", "./data", "/project/../etc"])
def test_mount_targets_must_be_absolute_without_dotdot(target: str) -> None:
    """A relative target or one with '..' is refused."""
    with pytest.raises(PolicyError, match=r"filesystem\.mounts\.0\.target.*absolute"):
        load_policy(with_mount("/srv/data", target))


@pytest.mark.parametrize("target", ["/workspace/data", "/project", "/data", "/mnt/x", "/opt/x"])
def test_mount_targets_outside_reserved_places_are_fine(target: str) -> None:
    """Targets such as /workspace/<name> and /project are accepted."""
    assert load_policy(with_mount("/srv/data", target)).filesystem.mounts[0].target == target


@pytest.mark.parametrize("target", ["//etc", "//", "//opt/athena"])
def test_a_double_slash_target_cannot_cover_a_reserved_place(target: str) -> None:
    """A target spelt with a leading '//' is refused like its single-slash form."""
    with pytest.raises(PolicyError):
        load_policy(with_mount("/srv/data", target))


def test_a_target_above_the_runner_is_refused() -> None:
    """A mount at /opt would hide /opt/athena and is refused."""
    with pytest.raises(PolicyError):
        load_policy(with_mount("/srv/data", "/opt"))


# --------------------------------------------------------------------------- mount sources


@pytest.mark.parametrize(
    "source", ["/", "/proc", "/proc/self", "/sys/x", "/etc", "/var/run/docker.sock", "/run"]
)
def test_dangerous_mount_sources_are_refused_at_load(source: str, tmp_path: Path) -> None:
    """/, the kernel's views, /etc and the Docker socket (or what holds it) are refused."""
    path = write(
        tmp_path / "p.yaml", f"filesystem: {{mounts: [{{source: '{source}', target: /data}}]}}\n"
    )
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    message = str(info.value)
    assert str(path) in message
    assert "filesystem.mounts.0.source" in message
    assert "cannot be mounted" in message


def test_a_file_named_docker_sock_is_refused(tmp_path: Path) -> None:
    """Any source named docker.sock is refused as a Docker socket."""
    with pytest.raises(PolicyError, match="Docker socket"):
        load_policy(with_mount(str(tmp_path / "docker.sock")))


def test_the_home_directory_and_its_parents_are_refused(home: Path, tmp_path: Path) -> None:
    """The home directory, and every directory containing it, cannot be a mount source."""
    for index, source in enumerate((home, home.parent, tmp_path)):
        path = write(
            tmp_path / "pol" / f"p{index}.yaml",
            f"filesystem: {{mounts: [{{source: '{source}', target: /data}}]}}\n",
        )
        with pytest.raises(PolicyError) as info:
            load_policy(path)
        assert str(path) in str(info.value)
        assert "filesystem.mounts.0.source" in str(info.value)
        assert "home directory" in str(info.value)


def test_a_directory_below_home_may_be_mounted(home: Path) -> None:
    """A project below the home directory is an acceptable source."""
    source = home / "project"
    assert load_policy(with_mount(str(source))).filesystem.mounts[0].source == str(source)


def test_a_parent_of_the_engine_state_is_refused() -> None:
    """/var/lib, which holds /var/lib/docker, is refused as a mount source."""
    with pytest.raises(PolicyError):
        load_policy(with_mount("/var/lib"))


def test_a_tilde_source_is_the_home_directory(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source of '~' means the home directory and is refused."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PolicyError, match="home directory"):
        load_policy(with_mount("~"))


# --------------------------------------------------------------------------- resolve_mounts


def test_resolve_mounts_expands_the_project_dir(home: Path, tmp_path: Path) -> None:
    """${project_dir} and ${project_dir}/sub become the resolved project directory."""
    project = tmp_path / "proj"
    (project / "sub").mkdir(parents=True)
    policy = load_policy(
        strict_with(
            filesystem={
                "mounts": [
                    {"source": PROJECT_DIR_TOKEN, "target": "/project"},
                    {"source": f"{PROJECT_DIR_TOKEN}/sub", "target": "/data", "read_only": False},
                ]
            }
        )
    )
    top, sub = project.stat(), (project / "sub").stat()
    assert resolve_mounts(policy, project) == (
        ResolvedMount(str(project.resolve()), "/project", True, top.st_dev, top.st_ino),
        ResolvedMount(str((project / "sub").resolve()), "/data", False, sub.st_dev, sub.st_ino),
    )


def test_resolve_mounts_of_research_mounts_the_project(home: Path, tmp_path: Path) -> None:
    """The shipped research policy mounts the given project directory read-only."""
    project = tmp_path / "proj"
    project.mkdir()
    info = project.stat()
    assert resolve_mounts(load_policy("research"), project) == (
        ResolvedMount(str(project.resolve()), "/project", True, info.st_dev, info.st_ino),
    )


def test_resolve_mounts_without_mounts_ignores_the_project_dir() -> None:
    """A policy without mounts resolves to no mounts, whatever the project directory."""
    assert resolve_mounts(load_policy("strict"), Path("/")) == ()


def test_resolve_mounts_refuses_root_as_project_dir() -> None:
    """A project directory of / is refused."""
    with pytest.raises(PolicyError, match="root of the host"):
        resolve_mounts(load_policy("research"), Path("/"))


def test_resolve_mounts_refuses_home_as_project_dir(home: Path) -> None:
    """The home directory as the project directory is refused."""
    with pytest.raises(PolicyError, match="home directory"):
        resolve_mounts(load_policy("research"), home)


def test_resolve_mounts_refuses_a_missing_project_dir(tmp_path: Path) -> None:
    """A project directory that does not exist is refused."""
    with pytest.raises(PolicyError, match="does not exist"):
        resolve_mounts(load_policy("research"), tmp_path / "absent")


def test_resolve_mounts_refuses_a_missing_source(home: Path, tmp_path: Path) -> None:
    """A mount source that does not exist is refused naming the policy and the field."""
    policy = load_policy(with_mount(str(tmp_path / "absent")))
    with pytest.raises(PolicyError, match=r"filesystem\.mounts\.0\.source.*does not exist"):
        resolve_mounts(policy, tmp_path)


def test_resolve_mounts_follows_symlinks_to_refused_places(home: Path, tmp_path: Path) -> None:
    """A symlink (made after loading, or below the project) pointing at /proc is refused."""
    link = tmp_path / "link"
    policy = load_policy(with_mount(str(link)))  # nothing there yet: accepted at load
    link.symlink_to("/proc")
    with pytest.raises(PolicyError, match=r"/proc cannot be mounted"):
        resolve_mounts(policy, tmp_path)

    project = tmp_path / "proj"
    project.mkdir()
    (project / "escape").symlink_to("/proc")
    via_token = load_policy(with_mount(f"{PROJECT_DIR_TOKEN}/escape"))
    with pytest.raises(PolicyError, match=r"inside /proc|leaves the project directory"):
        resolve_mounts(via_token, project)


def test_resolve_mounts_checks_policies_built_in_code(home: Path, tmp_path: Path) -> None:
    """A Policy built directly (no load-time check) still has dangerous sources refused."""
    policy = Policy(
        name="built", filesystem=Filesystem(mounts=(Mount(source="/proc", target="/data"),))
    )
    with pytest.raises(PolicyError, match="inside /proc"):
        resolve_mounts(policy, tmp_path)


def test_resolve_mounts_gives_the_resolved_source(home: Path, tmp_path: Path) -> None:
    """A plain source is returned resolved, with its target and read_only flag."""
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "alias").symlink_to(data)
    policy = load_policy(with_mount(str(tmp_path / "alias"), "/data", read_only=False))
    info = data.stat()
    assert resolve_mounts(policy, tmp_path) == (
        ResolvedMount(str(data.resolve()), "/data", False, info.st_dev, info.st_ino),
    )


# --------------------------------------------------------------------------- cache


def test_the_loader_rereads_a_file_whose_mtime_changed(tmp_path: Path) -> None:
    """Editing a policy file (a new mtime) is picked up by the next load."""
    path = write(tmp_path / "p.yaml", "limits: {memory_mb: 512}\n")
    assert load_policy(path).limits.memory_mb == 512
    stat = path.stat()
    write(path, "limits: {memory_mb: 1024}\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert load_policy(path).limits.memory_mb == 1024


def test_the_loader_caches_a_file_until_it_changes(tmp_path: Path) -> None:
    """An unchanged file is not parsed again; an edit is seen, even with its mtime put back."""
    from orchestrator import policy as policy_module

    path = write(tmp_path / "p.yaml", "limits: {memory_mb: 512}\n")
    assert load_policy(path).limits.memory_mb == 512
    parsed = policy_module._read_yaml.cache_info().misses
    assert load_policy(path).limits.memory_mb == 512
    assert policy_module._read_yaml.cache_info().misses == parsed  # nothing parsed again
    stat = path.stat()
    write(path, "limits: {memory_mb: 1024}\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # cp -p, rsync -a, touch -d
    assert load_policy(path).limits.memory_mb == 1024


def test_a_policy_without_extends_extends_strict(tmp_path: Path) -> None:
    """A file that does not say what it extends keeps strict's validation and limits it omits."""
    policy = load_policy(write(tmp_path / "mine.yaml", "limits:\n  memory_mb: 512\n"))
    strict = load_policy("strict")
    assert policy.name == "mine" and policy.extends == "strict"
    assert policy.limits.memory_mb == 512 and policy.limits.pids == strict.limits.pids
    assert policy.validation == strict.validation
    assert load_policy({"limits": {"memory_mb": 512}}).validation == strict.validation


def test_extends_null_starts_from_the_schema_defaults(tmp_path: Path) -> None:
    """`extends: null` opts out of strict: validation lists start empty."""
    policy = load_policy(write(tmp_path / "bare.yaml", "extends: null\n"))
    assert policy.extends is None
    assert policy.validation.forbidden_imports == () and policy.validation.forbidden_calls == ()


def test_a_project_dir_mount_may_not_leave_the_project(tmp_path: Path) -> None:
    """`${project_dir}/..` is refused: the token promises a mount inside the project."""
    project = tmp_path / "proj"
    project.mkdir()
    policy = load_policy(with_mount(f"{PROJECT_DIR_TOKEN}/.."))
    with pytest.raises(PolicyError, match="leaves the project directory"):
        resolve_mounts(policy, project)
    (project / "sub").mkdir()
    (mount,) = resolve_mounts(load_policy(with_mount(f"{PROJECT_DIR_TOKEN}/sub")), project)
    assert mount.source == str(project / "sub")


def test_resolve_mounts_records_what_it_checked_and_refuses_a_link(
    home: Path, tmp_path: Path
) -> None:
    """A checked source keeps its identity; one that is a link to elsewhere is refused."""
    project = tmp_path / "proj"
    (project / "sub").mkdir(parents=True)
    policy = load_policy(
        strict_with(filesystem={"mounts": [{"source": f"{PROJECT_DIR_TOKEN}/sub", "target": "/d"}]})
    )
    (mount,) = resolve_mounts(policy, project)
    info = (project / "sub").stat()
    assert (mount.device, mount.inode) == (info.st_dev, info.st_ino)
    (project / "sub").rename(project / "old")
    outside = tmp_path / "outside"
    outside.mkdir()
    (project / "sub").symlink_to(outside)  # resolves out of the project: refused
    with pytest.raises(PolicyError, match="leaves the project directory"):
        resolve_mounts(policy, project)


# --------------------------------------------------------------------------- the shipped cache


def test_a_shipped_policy_is_loaded_once_and_shared() -> None:
    """Every run that names a shipped policy (or none) gets the one frozen object."""
    assert load_policy("strict") is load_policy("strict")
    assert load_policy(None) is load_policy("strict")


def test_an_edited_shipped_policy_is_loaded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache keys on the files' mtimes: an edit takes effect on the next load."""
    import shutil

    import orchestrator.policy as policy_module

    copy = tmp_path / "policies"
    shutil.copytree(policy_module.shipped_policies_dir(), copy)
    monkeypatch.setattr(policy_module, "shipped_policies_dir", lambda: copy)
    before = load_policy("strict")
    assert load_policy("strict") is before
    path = copy / "strict.yaml"
    path.write_text(path.read_text().replace("description:", "description: edited.", 1))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after = load_policy("strict")
    assert after is not before and after.description.startswith("edited.")
    # An edit whose mtime is put back (cp -p, rsync -a, touch -d) is seen too: by its ctime.
    stat = path.stat()
    path.write_text(path.read_text().replace("description: edited.", "description: again.", 1))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load_policy("strict").description.startswith("again.")
