"""orchestrator.packages: requirement specs, the policy check and the install plan (pure)."""

from __future__ import annotations

import marshal

import pytest

from orchestrator.backends.protocol import encode_argv
from orchestrator.errors import PolicyError, RequestError
from orchestrator.languages import get_language
from orchestrator.models import ExecutionRequest
from orchestrator.packages import (
    MAX_REQUIREMENTS,
    check_requirements,
    check_requirements_allowed,
    install_argv,
    install_plan,
)
from orchestrator.policy import load_policy
from orchestrator.settings import Settings

NPM_OK = {"extends": "research", "validation": {"javascript": {"forbidden_modules": ["net"]}}}


@pytest.mark.parametrize(
    "spec", ["requests==2.32.3", "pandas[excel,xml]>=2,<3", "a.b_c-d", "numpy ~= 1.26", "x!=1.*"]
)
def test_pip_specs_are_accepted(spec: str) -> None:
    """PEP 508 names with extras and version specifiers pass unchanged."""
    assert check_requirements([spec], "python") == (spec,)


@pytest.mark.parametrize(
    "spec",
    [
        "http://evil.test/x.whl",
        "pkg @ https://evil.test/x.whl",
        "./pkg",
        "/tmp/pkg",
        "--index-url=http://evil",
        "-e .",
        "x; rm -rf /",
        "x; python_version<'3'",
        "git+https://github.com/a/b",
        "x==1 --pre",
        "",
    ],
)
def test_pip_specs_that_are_more_than_a_requirement_are_refused(spec: str) -> None:
    """URLs, paths, options, markers and shell words are refused, naming the entry."""
    with pytest.raises(RequestError, match=r"requirements\[0\]"):
        check_requirements([spec], "python")


@pytest.mark.parametrize(
    "spec", ["lodash", "lodash@4.17.21", "@scope/pkg@^1.2", "x@latest", "y@>=1 <2"]
)
def test_npm_specs_are_accepted(spec: str) -> None:
    """npm names with an optional version, range or tag pass."""
    assert check_requirements([spec], "javascript") == (spec,)


@pytest.mark.parametrize(
    "spec",
    [
        "user/repo",
        "git+ssh://x",
        "file:../x",
        "https://x/y.tgz",
        "--registry=http://evil",
        "x@1;ls",
    ],
)
def test_npm_specs_that_point_elsewhere_are_refused(spec: str) -> None:
    """Git shorthands, URLs, file: specs and options are not npm package specs."""
    with pytest.raises(RequestError, match="npm package"):
        check_requirements([spec], "javascript")


def test_shape_count_and_language_are_checked() -> None:
    """A string, too many entries, or bash: each refused with a reason."""
    with pytest.raises(RequestError, match="list of package specs"):
        check_requirements("requests", "python")
    with pytest.raises(RequestError, match=f"at most {MAX_REQUIREMENTS}"):
        check_requirements(["x"] * (MAX_REQUIREMENTS + 1), "python")
    with pytest.raises(RequestError, match=r"python .pip. and javascript .npm. only"):
        check_requirements(["x"], "bash")
    assert check_requirements(None, "bash") == ()


def test_the_request_carries_its_requirements() -> None:
    """ExecutionRequest.create checks and keeps them."""
    request = ExecutionRequest.create("1", "js", requirements=["lodash"])
    assert request.requirements == ("lodash",)
    with pytest.raises(RequestError):
        ExecutionRequest.create("1", requirements=["-r other.txt"])


def test_strict_is_refused_naming_the_policy_and_the_key() -> None:
    """No network: PolicyError with the policy, network.allowed_domains and what to add."""
    with pytest.raises(PolicyError) as caught:
        check_requirements_allowed(["x"], "python", load_policy("strict"), Settings())
    message = str(caught.value)
    assert "'strict'" in message and "network.allowed_domains" in message
    assert "pypi.org, files.pythonhosted.org" in message


def test_research_allows_pip_and_names_what_another_index_lacks() -> None:
    """research holds PyPI; an index elsewhere is refused with the domain to add."""
    research = load_policy("research")
    check_requirements_allowed(["x"], "python", research, Settings())
    other = Settings(pip_index_url="https://pkgs.example.com/simple")
    with pytest.raises(PolicyError, match=r"lacks pkgs\.example\.com"):
        check_requirements_allowed(["x"], "python", research, other)


def test_npm_installs_under_research_whose_guard_forbids_processes_to_the_code() -> None:
    """npm is the runner's process, not the code's: research (no child_process) may install."""
    check_requirements_allowed(["lodash"], "javascript", load_policy("research"), Settings())
    check_requirements_allowed(["lodash"], "javascript", load_policy(NPM_OK), Settings())


def test_the_plan_reaches_the_bootstrap_in_the_request_blob() -> None:
    """The blob carries the packages and the index; plain HTTP indexes are trusted hosts."""
    settings = Settings(pip_index_url="http://pypi.org/simple")
    plan = install_plan(("athena-probe",), "python", settings)
    assert plan == {
        "tool": "pip",
        "packages": ["athena-probe"],
        "index_url": "http://pypi.org/simple",
        "trusted": ["pypi.org"],
    }
    blob = marshal.loads(get_language("python").request_blob({}, None, None, plan))
    assert blob["requirements"] == plan
    assert install_plan((), "python", settings) is None
    assert install_plan(("lodash",), "javascript", Settings()) is None  # the runner runs npm


def test_npm_is_a_fixed_command_line_ending_in_the_checked_specs() -> None:
    """The runner's npm: no scripts, the configured registry, options ended before the specs."""
    argv = install_argv(("lodash@^4", "left-pad"), "javascript", Settings())
    assert argv is not None and argv[:2] == ["npm", "install"]
    assert "--ignore-scripts" in argv
    assert argv[argv.index("--registry") + 1] == "https://registry.npmjs.org"
    assert argv[-3:] == ["--", "lodash@^4", "left-pad"]
    assert install_argv(("x",), "python", Settings()) is None
    assert install_argv((), "javascript", Settings()) is None
    assert encode_argv(argv).count(b"\x00") == len(argv)


def test_index_settings_must_be_plain_urls() -> None:
    """An index URL with spaces or another scheme is refused by the settings."""
    with pytest.raises(ValueError):
        Settings(pip_index_url="https://pypi.org/simple --trusted-host evil")
    with pytest.raises(ValueError):
        Settings(npm_registry="file:///tmp/x")
