"""Hostile Ruby the validator must refuse under strict, and ordinary Ruby it must accept.

Policies have no Ruby section: the Ruby rules follow from forbidden_imports and forbidden_calls
(subprocess and os.system forbid spawning, socket forbids socket and net/*, eval forbids eval).
"""

from __future__ import annotations

import pytest

from orchestrator.models import ValidationIssue
from orchestrator.policy import Validation, load_policy
from orchestrator.validator import CodeValidator

STRICT = load_policy("strict").validation
VALIDATOR = CodeValidator()


def issues(code: str, rules: Validation = STRICT) -> list[ValidationIssue]:
    return VALIDATOR.validate(code, "ruby", rules)


def found(code: str, rules: Validation = STRICT) -> list[tuple[int | None, str, str]]:
    return [(i.line, i.severity, i.rule) for i in issues(code, rules)]


@pytest.mark.parametrize(
    "code",
    [
        'system("id")',
        "system 'id'",
        "`id`",
        "%x(id)",
        "exec 'id'",
        "spawn('id')",
        'IO.popen("id")',
        'Process.spawn("id")',
        "Process.exec('id')",
        "Kernel.system('id')",
        "::Kernel.system('id')",
        "Kernel.send(:system, 'id')",
        "send(:`, 'id')",
        "public_send('spawn', 'id')",
        "method(:system).call('id')",
        "Object.new.send(:system, 'id')",
        "Object.method(:spawn).call('id')",
        'open("|id")',
        "IO.read('|id')",
        "pid = fork",
        "fork { exit }",
        "Process.daemon",
        "Process.kill(9, 1)",
        'eval("1 + 1")',
        "Object::Kernel.system('id')",
        "::Object::Kernel.spawn('id')",
        "method(:puts).owner.system('id')",
        "File.popen('id')",
        "m.exec('id')",
        "x.open('|id')",
    ],
)
def test_process_spawning_and_its_disguises_are_forbidden_calls(code: str) -> None:
    """Every way to start a program, fork, signal or eval is a forbidden_call on its line."""
    assert found("x = 1\n" + code) == [(2, "error", "forbidden_call")]


def test_the_message_names_the_ruby_call_and_the_policy_entry() -> None:
    """A refusal says what was called and which entry of which field forbids it."""
    (issue,) = issues("IO.popen('id')")
    assert issue.message == (
        "calling IO.popen is forbidden by the policy (forbidden_imports lists 'subprocess')"
    )
    (issue,) = issues("fork")
    assert (
        issue.message == "calling fork is forbidden by the policy (forbidden_calls lists 'os.fork')"
    )


@pytest.mark.parametrize(
    ("code", "entry"),
    [
        ('require "open3"', "subprocess"),
        ("require 'pty'", "subprocess"),
        ('require "socket"', "socket"),
        ('require "net/http"', "socket"),
        ("require 'open-uri'", "socket"),
        ('require "fiddle"', "ctypes"),
        ('require "openssl"', "ssl"),
        ('Kernel.require "socket"', "socket"),
        ("Kernel.send(:require, 'open3')", "subprocess"),
        ("method(:puts).owner.public_send(:require, 'socket')", "socket"),
    ],
)
def test_libraries_standing_in_for_forbidden_modules_are_refused(code: str, entry: str) -> None:
    """A library is forbidden when forbidden_imports lists it or the module it stands in for."""
    (issue,) = issues(code)
    assert (issue.line, issue.rule) == (1, "forbidden_library")
    assert f"forbidden_imports lists {entry!r}" in issue.message


@pytest.mark.parametrize(
    ("code", "rule"),
    [
        ("require name", "dynamic_import"),
        ('require "net/#{kind}"', "dynamic_import"),
        ("obj.send(name, 1)", "dynamic_call"),
        ("method(name).call", "dynamic_call"),
        ("Object.const_get(name)", "dynamic_call"),
        ("open(path)", "dynamic_call"),
        ("IO.readlines(path)", "dynamic_call"),
        ("x.instance_eval('system 1')", "dynamic_code"),
        ("String.class_eval(code)", "dynamic_code"),
        ("binding.eval('1')", "dynamic_code"),
        ("k = Kernel", "module_alias"),
        ("[Process].each { |m| m }", "module_alias"),
        ("m = a || Kernel", "module_alias"),
        ("f(IO)", "module_alias"),
        ("Object.const_get(:Kernel)", "module_alias"),
        ("alias run system", "module_alias"),
        ("alias_method :run, :system", "module_alias"),
        ("k = Object::Kernel", "module_alias"),
        ("Kernel.then { |k| k }", "module_alias"),
        ("m = Kernel.dup", "module_alias"),
        ("ObjectSpace.each_object(Module) { |m| m }", "module_alias"),
        ("Process.instance_variable_set(:@x, 1)", "module_alias"),
        ("Object.const_get(:RubyVM)", "module_alias"),
        ("load 'x.rb'", "dynamic_code"),
        ("require_relative 'helper'", "dynamic_code"),
        ("require '/tmp/x'", "dynamic_code"),
        ("require './x'", "dynamic_code"),
        ("require 'erb'", "dynamic_code"),
        ("RubyVM::InstructionSequence.compile(s).eval", "dynamic_code"),
        ("$LOAD_PATH.unshift('/tmp')", "dynamic_import"),
        ("$: << '.'", "dynamic_import"),
        ("Gem.use_paths(nil, ['/tmp/g'])", "dynamic_code"),
        ("Gem::Specification.load('/tmp/x.gemspec')", "dynamic_code"),
        ("Gem.paths = {'GEM_PATH' => '/tmp/g'}", "dynamic_code"),
        ("YAML.unsafe_load(text)", "forbidden_call"),
        ("method(:require).call('open3')", "dynamic_import"),
        ("send(:load, 'x.rb')", "dynamic_code"),
    ],
)
def test_what_cannot_be_read_is_refused(code: str, rule: str) -> None:
    """Computed library and method names, strings run as code and guarded modules as values."""
    assert found(code) == [(1, "error", rule)]


@pytest.mark.parametrize(
    "code",
    [
        "puts JSON.generate(parameters)",
        "require 'json'\nrequire 'set'",
        "Thread.current.kill",
        "x.then { |y| y + 1 }",
        "File.open('data.csv').read",
        "$stdout.puts 1",
        "File.open(path) { |f| f.read }",
        "File.read(path)",
        "open('data.csv').each_line { |l| puts l }",
        "x.instance_eval { @a }",
        "obj.send(:size)",
        "3.times.map { |i| i * 2 }.sum",
        "system = 3\nputs system",
        "Process.pid",
        "IO.read('data.csv')",
        "Struct.new(:a).new(1).a",
        "x.is_a?(IO)",
        "case x\nwhen IO then 1\nend",
        "raise 'no' unless $stdout == STDOUT",
        "Process::Status",
        "class Pipe < IO; end",
        "puts '`id` and system(1) in a string'",
        "# system('id') in a comment",
    ],
)
def test_ordinary_ruby_passes(code: str) -> None:
    """Everyday Ruby (and forbidden names inside strings or comments) raises nothing."""
    assert issues(code) == []


def test_development_forbids_nothing() -> None:
    """Under development (nothing forbidden) only syntax is checked."""
    rules = load_policy("development").validation
    assert issues("system('id')\nrequire name\n`id`", rules) == []


def test_a_policy_without_spawning_entries_lets_ruby_spawn() -> None:
    """The rules follow the policy: no subprocess or os.system entry, no spawning refusal."""
    rules = Validation(forbidden_imports=("socket",))
    assert found("system('id')\nrequire 'socket'") == [
        (1, "error", "forbidden_call"),
        (2, "error", "forbidden_library"),
    ]
    assert found("system('id')\nrequire 'socket'", rules) == [(2, "error", "forbidden_library")]


def test_code_from_files_is_refused_only_where_eval_is() -> None:
    """load and require_relative run unread files as code: refused only when eval is forbidden."""
    code = "require_relative 'helper'\nload 'x.rb'\n$LOAD_PATH << '.'"
    assert found(code, Validation(forbidden_imports=("subprocess",))) == []
    rules = Validation(forbidden_calls=("eval",))
    assert found(code, rules) == [
        (1, "error", "dynamic_code"),
        (2, "error", "dynamic_code"),
        (3, "error", "dynamic_import"),
    ]


def test_a_syntax_error_is_a_warning() -> None:
    """Code the grammar cannot parse gets one syntax warning; Ruby reports the exact error."""
    assert found("x = [\n") == [(1, "warning", "syntax")]
