"""Every registered language is complete: image folder, bootstrap, validator, consistent argv."""

from __future__ import annotations

import importlib
import json
import marshal
import re
from pathlib import Path

import pytest

from orchestrator.languages import LANGUAGES, Language, get_language, images_dir
from orchestrator.policy import load_policy
from tests.contract import SNIPPETS

NAMES = [lang.name for lang in LANGUAGES]


def dockerfile(language: Language) -> str:
    path = images_dir() / language.image / "Dockerfile"
    assert path.is_file(), f"{language.name}: images/{language.image}/Dockerfile is missing"
    return path.read_text()


def json_instruction(text: str, instruction: str) -> list[str]:
    found = re.search(rf"^{instruction} (\[.*\])$", text, re.MULTILINE)
    assert found, f"no {instruction} [...] line"
    value: list[str] = json.loads(found.group(1))
    return value


@pytest.mark.parametrize("name", NAMES)
def test_each_language_has_an_image_folder_with_its_boot_file(name: str) -> None:
    """images/<name>/ holds a Dockerfile and the bootstrap, which the image copies to /opt/athena."""
    language = get_language(name)
    text = dockerfile(language)
    assert language.boot_path().is_file(), f"{name}: {language.boot_path()} is missing"
    assert f"COPY {language.boot} /opt/athena/{language.boot}" in text
    assert f'org.athena.language="{name}"' in text


@pytest.mark.parametrize("name", NAMES)
def test_the_image_runs_the_same_command_as_the_host_modes(name: str) -> None:
    """The image's CMD is the registry's argv with the container's paths; its code file matches."""
    language = get_language(name)
    text = dockerfile(language)
    code = f"/workspace/{language.code_file}"
    entrypoint = json_instruction(text, "ENTRYPOINT")
    assert entrypoint[entrypoint.index("--code-file") + 1] == code
    cmd = json_instruction(text, "CMD")
    assert Path(cmd[0]).name == Path(language.interpreter).name
    assert cmd == language.argv(code, f"/opt/athena/{language.image_boot}", interpreter=cmd[0])


@pytest.mark.parametrize("name", NAMES)
def test_the_host_argv_runs_the_boot_file_on_the_code(name: str) -> None:
    """argv starts with the host interpreter and names the bootstrap before the code, last."""
    language = get_language(name)
    argv = language.argv(Path("/w") / language.code_file, language.boot_path())
    assert argv[0] == language.interpreter and Path(argv[0]).is_absolute()
    assert argv[-1] == f"/w/{language.code_file}"
    assert argv.index(str(language.boot_path())) < len(argv) - 1
    assert Path(language.code_file).stem == "main"


@pytest.mark.parametrize("name", NAMES)
def test_each_language_has_a_validator(name: str) -> None:
    """The validator names an importable function; its grammar (if any) is installed."""
    language = get_language(name)
    module, function = language.validator.split(":")
    assert module.startswith("orchestrator.validator.")
    assert callable(getattr(importlib.import_module(module), function))
    if language.grammar is not None:
        assert callable(importlib.import_module(language.grammar).language)
    assert language.check("", load_policy("strict").validation) == []


def test_names_and_aliases_are_unique_and_lower_case() -> None:
    """No two languages share a name or alias; canonical names are lower-case identifiers."""
    names = [n for lang in LANGUAGES for n in (lang.name, *lang.aliases)]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z][a-z0-9]*", n) for n in names)


def test_image_folders_are_registered_languages() -> None:
    """Every folder under images/ but the runner is a registered language (none orphaned)."""
    folders = {p.name for p in images_dir().iterdir() if (p / "Dockerfile").is_file()}
    assert folders - {"runner"} == set(NAMES)


def test_the_contract_suite_has_snippets_for_every_language() -> None:
    """tests/contract.py has the contract's snippets for each registered language."""
    assert set(SNIPPETS) == set(NAMES)


def test_only_languages_with_a_guard_take_the_envelope() -> None:
    """A language with a guard builder gets {parameters, guard}; the others the bare blob."""
    for language in LANGUAGES:
        blob = language.request_blob({"n": 1}, None)
        envelope = (
            marshal.loads(blob) == {"parameters": {"n": 1}, "guard": None}
            if language.marshal_envelope
            else blob.startswith(b'{"parameters"')
        )
        assert envelope == language.takes_guard, language.name


def test_ruby_guard_carries_the_kernel_refusals_only() -> None:
    """Ruby's guard is what the runner refuses in the kernel; none where nothing is forbidden."""
    ruby = get_language("ruby")
    assert ruby.runtime_guard(load_policy("strict")) == {
        "policy": "strict",
        "processes": True,
        "sockets": True,
    }
    assert ruby.runtime_guard(load_policy("research")) == {
        "policy": "research",
        "processes": True,
        "sockets": False,  # an allowlist: the network is reachable by design
    }
    assert ruby.runtime_guard(load_policy("development")) is None
    assert ruby.runtime_guard(load_policy({"validation": {"enforce": False}})) is None
