"""Static checks of code against a policy's validation rules, before a run.

The validator is a tripwire, not the boundary: the container (and the run-time layer inside it)
must hold whatever it misses. It gives early, readable refusals. It uses real parsers (``ast``
for Python, tree-sitter for JavaScript, bash and ruby), so strings and comments are never
mistaken for code, and it refuses what it cannot follow: names computed at run time, aliases
handed on as values, modules reached through other modules, commands whose names are computed.

Rules of the findings (severity ``error`` unless noted):

- all languages: ``syntax`` (an error for Python, a warning for JavaScript and bash);
- Python (:mod:`.python`): ``forbidden_import``, ``forbidden_call``, ``forbidden_wrapper``,
  ``module_alias``, ``builtins_access``, ``dynamic_import``, ``dynamic_call``, and
  ``introspection`` (a warning);
- JavaScript (:mod:`.javascript`): ``forbidden_module``, ``dynamic_import``, ``dynamic_call``,
  ``dynamic_code``, ``module_alias``;
- bash (:mod:`.bash`): ``forbidden_command``, ``computed_command``;
- ruby (:mod:`.ruby`): ``forbidden_library``, ``forbidden_call``, ``dynamic_import``,
  ``dynamic_call``, ``dynamic_code``, ``module_alias``.

Each language's entry in :mod:`orchestrator.languages` names its checker (``validator``).
"""

from __future__ import annotations

from orchestrator.languages import get_language
from orchestrator.models import ValidationIssue
from orchestrator.policy import Validation

__all__ = ["CodeValidator"]


class CodeValidator:
    """Checks code against a policy's validation rules before a run."""

    def validate(self, code: str, language: str, rules: Validation) -> list[ValidationIssue]:
        """Return what ``code`` does that ``rules`` refuse, by line (errors first within one).

        Args:
            code: the source text.
            language: a language we run (aliases are accepted too).
            rules: the policy's ``validation`` section.

        Returns:
            The findings, each once; severity ``error`` blocks a run when ``rules.enforce`` is
            set.

        Raises:
            UnknownLanguageError: ``language`` is not a language we run.

        """
        checks = get_language(language).check(code, rules)
        found = dict.fromkeys(checks)  # one finding per node, even when reached twice
        return sorted(found, key=lambda i: (i.line or 0, i.severity != "error"))
