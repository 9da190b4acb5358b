"""The policy gate: which policies a tenant may use over the service, and what inline ones may do."""

from __future__ import annotations

from typing import Any

import pytest

from athena.service.gate import allowed_policy_names, resolve_policy
from athena.service.tokens import Tenant, local_tenant
from orchestrator.errors import PolicyError, PolicyNotFoundError
from orchestrator.policy import load_policy, shipped_policy_names

DEFAULT = local_tenant()  # strict, research
EVERYTHING = Tenant(name="ops", policies=tuple(shipped_policy_names()))
RESEARCH_ONLY = Tenant(name="lab", policies=("research",))


def test_none_is_strict_when_allowed_else_the_first() -> None:
    """No policy: strict if the tenant may use it, else the tenant's first policy."""
    assert resolve_policy(None, DEFAULT).name == "strict"
    assert resolve_policy(None, RESEARCH_ONLY).name == "research"


def test_allowed_names_keep_the_tokens_order() -> None:
    """allowed_policy_names lists the tenant's shipped policies in its token's order."""
    tenant = Tenant(name="t", policies=("research", "strict"))
    assert allowed_policy_names(tenant) == ("research", "strict")


def test_an_allowed_name_loads_that_policy() -> None:
    """A name the tenant may use gives the shipped policy itself."""
    assert resolve_policy("research", DEFAULT) == load_policy("research")


def test_a_shipped_name_the_tenant_may_not_use_is_refused() -> None:
    """development is opt-in: a default tenant gets a PolicyError naming what it may use."""
    with pytest.raises(
        PolicyError, match=r"may not use policy 'development'.*strict, research"
    ) as e:
        resolve_policy("development", DEFAULT)
    assert not isinstance(e.value, PolicyNotFoundError)


def test_an_unknown_name_names_the_valid_ones() -> None:
    """An unknown name: PolicyNotFoundError naming the tenant's policies."""
    with pytest.raises(
        PolicyNotFoundError, match="unknown policy 'nope': use one of strict, research"
    ):
        resolve_policy("nope", DEFAULT)


@pytest.mark.parametrize("spec", ["/etc/athena/p.yaml", "./p.yaml", "p.yml", "policies/strict"])
def test_paths_are_refused(spec: str) -> None:
    """A path names a file on the server's disk: refused, naming the policies to use instead."""
    with pytest.raises(PolicyError, match=r"paths on the server's disk are not accepted.*strict"):
        resolve_policy(spec, EVERYTHING)


@pytest.mark.parametrize("spec", [1, ["strict"], True, 2.5])
def test_other_types_are_refused(spec: object) -> None:
    """Only None, a name or a dict is a policy over the service."""
    with pytest.raises(PolicyError, match="must be a policy name"):
        resolve_policy(spec, DEFAULT)


def test_an_inline_policy_may_change_limits_and_validation() -> None:
    """Lower limits and, in a container only, unenforced validation; the rest is the base's."""
    policy = resolve_policy(
        {
            "extends": "research",
            "limits": {"memory_mb": 64, "timeout_seconds": 5},
            "validation": {"enforce": False},
            "fallback": ["docker"],
        },
        DEFAULT,
    )
    base = load_policy("research")
    assert policy.limits.memory_mb == 64 and policy.limits.timeout_seconds == 5
    assert not policy.validation.enforce
    assert policy.network == base.network and policy.filesystem == base.filesystem


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"memory_mb": 257}, "limits.memory_mb"),
        ({"timeout_seconds": 86400}, "limits.timeout_seconds"),
        ({"cpus": 2}, "limits.cpus"),
        ({"pids": 65}, "limits.pids"),
        ({"max_output_bytes": 2**28}, "limits.max_output_bytes"),
        ({"file_size_mb": 1024}, "limits.file_size_mb"),
        ({"open_files": 4096}, "limits.open_files"),
    ],
)
def test_an_inline_policy_may_not_raise_a_limit_over_its_base(
    limits: dict[str, float], field: str
) -> None:
    """A token grants its policies' share of the host: an inline dict asks for less, never more."""
    with pytest.raises(PolicyError, match=rf"sandbox_policy\.{field}: .*at most"):
        resolve_policy({"extends": "strict", "limits": limits}, DEFAULT)
    with pytest.raises(PolicyError, match=r"filesystem\.tmpfs_mb"):
        resolve_policy({"extends": "strict", "filesystem": {"tmpfs_mb": 4096}}, DEFAULT)


def test_validation_may_be_unenforced_only_where_every_mode_is_a_container() -> None:
    """enforce: false with srt or restricted left in fallback is refused; docker alone is not."""
    with pytest.raises(PolicyError, match=r"validation\.enforce: .*fallback: \[docker\]"):
        resolve_policy({"extends": "strict", "validation": {"enforce": False}}, DEFAULT)
    policy = resolve_policy(
        {"extends": "strict", "validation": {"enforce": False}, "fallback": ["docker"]}, DEFAULT
    )
    assert not policy.validation.enforce and policy.fallback == ("docker",)


def test_an_inline_policy_without_extends_extends_strict() -> None:
    """As in the library, a dict without extends extends strict (if the tenant may use it)."""
    assert resolve_policy({"limits": {"pids": 16}}, DEFAULT).network.mode == "none"
    with pytest.raises(PolicyError, match=r"may not use policy 'strict'.*research"):
        resolve_policy({"limits": {"pids": 16}}, RESEARCH_ONLY)


@pytest.mark.parametrize(
    ("extends", "message"),
    [
        (None, "must extend a policy you may use"),
        (3, "must extend a policy you may use"),
        ("development", "may not use policy 'development'"),
        ("nope", "unknown policy"),
        ("../x.yaml", "paths on the server's disk"),
    ],
)
def test_extends_must_name_a_policy_the_tenant_may_use(extends: object, message: str) -> None:
    """extends: null, a number, a policy not allowed, an unknown one or a path are refused."""
    with pytest.raises(PolicyError, match=message):
        resolve_policy({"extends": extends}, DEFAULT)


@pytest.mark.parametrize("name", shipped_policy_names())
def test_extending_a_policy_unchanged_reaches_what_it_reaches(name: str) -> None:
    """Every shipped policy extended with nothing changed passes and equals its base."""
    policy = resolve_policy({"extends": name}, EVERYTHING)
    dump = policy.model_dump(exclude={"name", "extends", "description"})
    assert dump == load_policy(name).model_dump(exclude={"name", "extends", "description"})


def test_a_shipped_name_inside_a_dict_is_refused() -> None:
    """An inline policy may not call itself strict: records would mistake it for the shipped one."""
    with pytest.raises(PolicyError, match="shipped policy's name"):
        resolve_policy({"extends": "strict", "name": "strict"}, DEFAULT)


def _refused(spec: dict[str, Any], tenant: Tenant = DEFAULT) -> str:
    with pytest.raises(PolicyError) as caught:
        resolve_policy(spec, tenant)
    return str(caught.value)


@pytest.mark.parametrize(
    "mounts",
    [
        [{"source": "/tmp", "target": "/data"}],
        [{"source": "~nosuchuser/x", "target": "/data"}],
        [{"source": "${project_dir}", "target": "/project"}],
        "not a list",
        [42],
    ],
)
def test_strict_cannot_gain_a_mount(mounts: object) -> None:
    """No mount may be added to a base without one; no client path is resolved on disk."""
    message = _refused({"extends": "strict", "filesystem": {"mounts": mounts}})
    assert "filesystem.mounts" in message
    assert "cannot be resolved" not in message


def test_research_mount_may_not_become_writable_or_move() -> None:
    """research's read-only project mount stays read-only and where it is."""
    rw = [{"source": "${project_dir}", "target": "/project", "read_only": False}]
    assert "set read_only: true" in _refused({"extends": "research", "filesystem": {"mounts": rw}})
    moved = [{"source": "${project_dir}", "target": "/data"}]
    assert "cannot add or change mounts" in _refused(
        {"extends": "research", "filesystem": {"mounts": moved}}
    )
    parent = [{"source": "${project_dir}/..", "target": "/project"}]
    assert "cannot add or change mounts" in _refused(
        {"extends": "research", "filesystem": {"mounts": parent}}
    )


def test_mounts_may_be_dropped_or_made_read_only() -> None:
    """Fewer mounts, or read-only ones, reach less: allowed."""
    assert resolve_policy({"extends": "research", "filesystem": {"mounts": []}}, DEFAULT)
    ro = [{"source": "${project_dir}", "target": "/project", "read_only": True}]
    policy = resolve_policy({"extends": "development", "filesystem": {"mounts": ro}}, EVERYTHING)
    assert policy.filesystem.mounts[0].read_only


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"extends": "strict", "network": {"mode": "open"}}, "network.mode"),
        (
            {"extends": "strict", "network": {"mode": "allowlist", "allowed_domains": ["x.org"]}},
            "network.mode",
        ),
        ({"extends": "research", "network": {"mode": "open"}}, "network.mode"),
        (
            {"extends": "research", "network": {"allowed_domains": ["pypi.org", "evil.example"]}},
            "network.allowed_domains",
        ),
        ({"extends": "strict", "runtime": {"user": "1000:1000"}}, "runtime.user"),
        ({"extends": "strict-gvisor", "runtime": {"gvisor": "prefer"}}, "runtime.gvisor"),
        ({"extends": "strict", "fallback": ["docker", "inprocess"]}, "fallback"),
        ({"extends": "strict-gvisor", "fallback": ["docker", "srt"]}, "fallback"),
        (
            {"extends": "strict", "filesystem": {"read_only_root": False}},
            "filesystem.read_only_root",
        ),
        (
            {"extends": "research", "filesystem": {"max_mount_write_bytes": 2**40}},
            "filesystem.max_mount_write_bytes",
        ),
    ],
)
def test_an_inline_policy_may_not_reach_more_of_the_host(spec: dict[str, Any], field: str) -> None:
    """Wider network, another user, weaker gVisor or fallback, writable root: refused by field."""
    message = _refused(spec, EVERYTHING)
    assert f"sandbox_policy.{field}" in message
    assert "reaches more of the host than" in message


@pytest.mark.parametrize(
    "spec",
    [
        {"extends": "research", "network": {"mode": "none"}},
        {"extends": "research", "network": {"allowed_domains": ["pypi.org"]}},
        {"extends": "development", "network": {"mode": "allowlist", "allowed_domains": ["a.b"]}},
        {"extends": "strict", "runtime": {"gvisor": "require"}},
        {"extends": "strict", "fallback": ["docker"]},
        {"extends": "development", "fallback": ["docker", "srt"]},
        {"extends": "research", "filesystem": {"max_mount_write_bytes": 0, "tmpfs_mb": 16}},
    ],
)
def test_an_inline_policy_may_narrow_its_base(spec: dict[str, Any]) -> None:
    """Narrower network, stronger runtime or fallback, smaller write budget: accepted."""
    assert resolve_policy(spec, EVERYTHING).extends == spec["extends"]


def test_an_invalid_inline_policy_says_which_field() -> None:
    """The schema's own bounds still apply, with the field in the message."""
    message = _refused({"extends": "strict", "limits": {"memory_mb": 1}})
    assert "limits.memory_mb" in message
