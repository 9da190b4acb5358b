"""Hostile bash the validator must refuse under research, and ordinary bash it must accept.

For bash the static check is advice and the container is the boundary; under enforcement,
command names computed at run time are refused (computed_command), and literal names are
checked however they are written and whatever runs them.
"""

from __future__ import annotations

import pytest

from orchestrator.models import ValidationIssue
from orchestrator.policy import BashRules, Validation, load_policy
from orchestrator.validator import CodeValidator

RESEARCH = load_policy("research").validation
VALIDATOR = CodeValidator()


def issues(code: str, rules: Validation = RESEARCH) -> list[ValidationIssue]:
    return VALIDATOR.validate(code, "bash", rules)


def found(code: str, rules: Validation = RESEARCH) -> list[tuple[int | None, str, str]]:
    return [(i.line, i.severity, i.rule) for i in issues(code, rules)]


@pytest.mark.parametrize(
    "code",
    [
        "$cmd args",
        "${x} args",
        '"$(echo curl)" x',
        "`echo curl` x",
        "$(echo curl) x",
        '"${cmd[@]}" x',
        '"$@"',
        "/usr/bin/cur? x",
        "/bin/c[u]rl x",
        "w*et x",
        "c{u,}rl x",
        "exec $c",
        "env $tool x",
        "xargs $tool",
        "timeout 5 $c x",
    ],
)
def test_computed_and_globbed_command_names_are_refused(code: str) -> None:
    """A name decided at run time (expansion, substitution, glob, braces) is computed_command."""
    assert found("x=1\n" + code) == [(2, "error", "computed_command")]


def test_computed_command_message_says_it_cannot_be_checked() -> None:
    """The message shows the name and says it is computed at run time and cannot be checked."""
    [issue] = issues("$cmd x")
    assert issue.message.startswith("the command name '$cmd' is computed at run time, so it cannot")
    assert "bash.forbidden_commands" in issue.message
    [glob] = issues("w*et x")
    assert "a pattern the shell expands at run time" in glob.message


@pytest.mark.parametrize(
    "code",
    [
        "/usr/bin/curl x",
        "~/bin/curl x",
        "'cu'rl x",
        '"cu""rl" x',
        "c\\url x",
        "$'\\x63url' x",
        "$'\\143url' x",
        "command curl x",
        "builtin curl x",
        "env -i PATH=/bin curl x",
        "nohup wget x",
        "timeout -k 1 5 wget x",
        "nice -5 curl x",
        "busybox wget x",
        "stdbuf -o0 curl x",
        "setsid curl x",
        "ionice -c 3 curl x",
        "taskset -c 0 curl x",
        "flock /tmp/l curl x",
        "strace -f curl x",
        "coproc curl x",
        "printf 'x\\n' | xargs -I{} curl {}",
        "find . -exec curl {} \\;",
        "find . -name x -execdir wget {} +",
    ],
)
def test_forbidden_commands_are_found_however_written_and_wrapped(code: str) -> None:
    """Paths, quotes, escapes, ANSI-C strings and wrappers do not hide a forbidden command."""
    assert found("x=1\n" + code) == [(2, "error", "forbidden_command")]


@pytest.mark.parametrize(
    "code",
    [
        "bash -c 'curl x'",
        'sh -c "curl x"',
        "bash -lc 'wget x'",
        "bash -e -c 'wget x'",
        "bash -o pipefail -c 'nc x'",
        "bash -c \"bash -c 'curl x'\"",
        "busybox sh -c 'wget x'",
        "find . -exec sh -c 'curl \"$1\"' _ {} \\;",
        "eval curl x",
        'eval "curl x"',
        "env -S 'curl x'",
        "flock /tmp/l -c 'curl x'",
        "script -qc 'curl x' /dev/null",
        "trap 'curl x' EXIT",
        "alias c='curl x'",
        "watch curl x",
        "bash <<< 'curl x'",
    ],
)
def test_literal_scripts_given_to_shells_are_parsed(code: str) -> None:
    """bash -c, eval, trap, alias and here-strings run strings: literal ones are checked."""
    assert found("x=1\n" + code) == [(2, "error", "forbidden_command")]


@pytest.mark.parametrize(
    ("code", "line"),
    [("sh <<EOF\ncurl x\nEOF", 2), ("x=1\nsh <<'EOF'\necho\nwget x\nEOF", 4)],
)
def test_here_documents_fed_to_a_shell_are_checked_on_their_lines(code: str, line: int) -> None:
    """A here-document given to a shell is its script: found on the line it is written."""
    assert found(code) == [(line, "error", "forbidden_command")]


@pytest.mark.parametrize(
    "code",
    [
        'sh -c "$x"',
        'bash -c "curl $url"',
        'eval "$cmd"',
        'trap "$c" EXIT',
        'bash <<< "$s"',
        "bash <<EOF\n$cmd\nEOF",
        "echo 'curl x' | bash",
        "cat f | sh -s",
        "bash < /dev/stdin",
        "bash <&3",
        "bash <(echo curl)",
        "bash $script",
        "source $f",
        ". $f",
        "source /dev/stdin",
        "source <(echo x)",
        ". /proc/self/fd/0",
    ],
)
def test_computed_scripts_are_refused(code: str) -> None:
    """A script string, path or stream computed at run time cannot be checked: refused."""
    assert "computed_command" in {rule for _, _, rule in found(code)}


def test_nested_scripts_report_the_inner_line() -> None:
    """A finding inside a multi-line bash -c string is reported on its own line."""
    assert found("x=1\nbash -c 'echo a\nwget x'") == [(3, "error", "forbidden_command")]


def test_scripts_nested_too_deeply_are_refused() -> None:
    """Scripts inside scripts are followed to a depth, then refused."""
    code = "curl x"
    for _ in range(10):
        code = "eval " + "'" + code.replace("'", "'\\''") + "'"
    assert "computed_command" in {rule for _, _, rule in found(code)}


ORDINARY = [
    'echo hello\nfor i in 1 2 3; do echo "$i"; done',
    'x=5\necho "$x" "${x}" $x\ngrep "$pat" file.txt | sort | uniq -c',
    'now=$(date +%s)\necho "$(date)" `date`\nfiles=$(ls /tmp)',
    "f() { local n=$1; echo $((n * 2)); }\nf 3",
    "if [ -f x ]; then cat x; elif [[ -d y ]]; then ls y; else echo none; fi",
    'while read -r line; do echo "$line"; done < input.txt',
    "cat <<EOF\nhello $USER\nEOF",
    "case $1 in a) echo a;; *) echo other;; esac",
    'set -euo pipefail\nexport PATH="$HOME/bin:$PATH"\nreadonly X=1',
    "python3 -c 'print(1)'\njq '.a' file.json\nawk '{print $1}' f | head -n 3",
    "timeout 5 grep curl notes.txt\ncommand -v curl >/dev/null || echo missing",
    "mkdir -p /tmp/out && cd /tmp/out && touch a b\nfind . -name '*.txt' -exec wc -l {} \\;",
    "xargs -n1 echo < list.txt\nenv | sort\nenv FOO=1 printenv FOO",
    "bash ./script.sh arg\nsh -c 'echo hi; ls -la'\nbash -c \"echo done\"",
    "trap 'echo bye' EXIT\nsource ./env.sh\n. /etc/os-release",
    'arr=(a b c)\necho "${arr[@]}" ${#arr[@]}',
    "ls *.txt\nrm -f /tmp/a*\ncp /tmp/x{1,2} /tmp/y",
    "echo $'a\\tb'\necho 'curl x'\n# curl in a comment",
]


@pytest.mark.parametrize("code", ORDINARY)
def test_ordinary_bash_has_no_findings(code: str) -> None:
    """Variables and substitutions as arguments, loops, functions, pipes and globs as arguments."""
    assert issues(code) == []


def test_nothing_forbidden_means_no_findings() -> None:
    """With no forbidden commands, computed names are not refused either."""
    assert issues('$cmd x\neval "$y"\nw*et x', Validation()) == []
    only_wget = Validation(bash=BashRules(forbidden_commands=("wget",)))
    assert found("curl x\nbash -c 'wget x'", only_wget) == [(2, "error", "forbidden_command")]
