"""Command rules (docs/rules.md): the model, matching, the strictest-wins evaluation, wrappers, absolute
paths, shell scripts, and the loaders of both formats (corral TOML, Codex .rules through Starlark)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from policies import (
    CommandRule,
    CommandRules,
    PolicyError,
    load_rules,
    profiles,
    rules_from_dict,
    rules_from_starlark,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "rules").iterdir())

AGENT = """
prefix_rule(pattern=["git", ["status", "diff"]], match=["git status"], not_match=["git push"])
prefix_rule(pattern=["git", ["push", "fetch"]], decision="prompt", justification="remote",
            match=["git push origin main", ["git", "fetch"]], not_match=[["git", "status"]])
prefix_rule(pattern=["git", "push", "--force"], decision="forbidden", justification="Use --force-with-lease.")
prefix_rule(pattern=["rm", ["-rf", "-fr"]], decision="forbidden", justification="Use trash instead.")
prefix_rule(pattern=["curl"], decision="forbidden", justification="No downloads.")
prefix_rule(pattern=[["ls", "echo", "cat"]])
"""


@pytest.fixture
def agent() -> CommandRules:
    return rules_from_starlark(AGENT, source="agent.rules")


def decide(rules: CommandRules, *argv: str) -> str:
    return rules.evaluate(list(argv)).decision


# -- every example file of the project loads, and so checks its own examples ---------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_rule_files_load_and_their_examples_pass(path: Path) -> None:
    rules = load_rules(path)
    assert len(rules.rules) >= 5
    assert sum(len(r.match) + len(r.not_match) for r in rules.rules) >= 10
    for rule in rules.rules:
        for example in rule.match:
            d = rules.evaluate(example)
            assert any(m.rule is rule for m in d.matches), (rule.name, example)
        for example in rule.not_match:
            d = rules.evaluate(example)
            assert not any(m.rule is rule for m in d.matches), (rule.name, example)


def test_both_example_formats_decide_the_tricky_script_alike() -> None:
    for path in EXAMPLES:
        d = load_rules(path).evaluate(["bash", "-lc", "git status; curl x | sh"])
        assert d.decision == "forbidden", path
        assert d.rule is not None
        assert "curl" in d.rule.programs


# -- the model --------------------------------------------------------------------------------------------


def test_pattern_is_normalised_to_alternatives() -> None:
    r = CommandRule(pattern=["git", ["push", "fetch", "push"]], decision="prompt")  # type: ignore[arg-type]
    assert r.pattern == (("git",), ("push", "fetch"))
    assert r.describe() == "git [push|fetch]"


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"pattern": []}, "pattern"),
        ({"pattern": "git"}, "pattern"),
        ({"pattern": ["git", []]}, "pattern[1]"),
        ({"pattern": ["git", [""]]}, "pattern[1]"),
        ({"pattern": ["git", 3]}, "pattern[1]"),
        ({"pattern": ["git"], "decision": "deny"}, "decision"),
        ({"pattern": ["git"], "justification": "  "}, "justification"),
        ({"pattern": ["git"], "profile": "root"}, "profile"),
        ({"pattern": ["git"], "decision": "forbidden", "profile": "read-only"}, "profile"),
        ({"pattern": ["git"], "match": [""]}, "match[0]"),
        ({"pattern": ["git"], "not_match": ["'unclosed"]}, "not_match[0]"),
        ({"pattern": ["git"], "match": [3]}, "match[0]"),
    ],
)
def test_bad_rule_fields_name_the_field(kwargs: dict[str, object], path: str) -> None:
    with pytest.raises(PolicyError) as err:
        CommandRule(name="r1", **kwargs)  # type: ignore[arg-type]
    assert err.value.path == f"r1.{path}"


def test_a_failing_match_example_is_a_policy_error_naming_the_rule() -> None:
    rule = CommandRule(pattern=["git", "push"], match=["git pull"], name="push-rule")
    with pytest.raises(PolicyError) as err:
        CommandRules([rule], source="x.toml")
    assert err.value.path == "push-rule.match[0]"
    assert "does not match" in err.value.reason
    assert "git push" in err.value.reason
    assert err.value.source == "x.toml"


def test_a_failing_not_match_example_is_a_policy_error_naming_the_rule() -> None:
    rule = CommandRule(pattern=["git"], not_match=["git status"], name="git-any")
    with pytest.raises(PolicyError) as err:
        CommandRules([rule])
    assert err.value.path == "git-any.not_match[0]"


def test_examples_are_checked_against_their_own_rule_only() -> None:
    # Another rule matching the not_match example does not count against this one (as in Codex).
    CommandRules(
        [
            CommandRule(pattern=["git", "push"], not_match=["git status"], name="a"),
            CommandRule(pattern=["git", "status"], match=["git status"], name="b"),
        ]
    )


def test_opaque_cannot_be_looser_than_default() -> None:
    with pytest.raises(PolicyError) as err:
        CommandRules([], default="forbidden", opaque="prompt")
    assert err.value.path == "opaque"
    assert CommandRules([], default="allow").opaque == "prompt"
    assert CommandRules([], default="forbidden").opaque == "forbidden"


# -- evaluation -------------------------------------------------------------------------------------------


def test_strictest_matching_rule_wins(agent: CommandRules) -> None:
    assert decide(agent, "git", "status") == "allow"
    assert decide(agent, "git", "push", "origin") == "prompt"
    d = agent.evaluate(["git", "push", "--force", "origin"])
    assert d.decision == "forbidden"
    assert d.rule is not None
    assert d.rule.describe() == "git push --force"
    assert d.justification == "Use --force-with-lease."
    assert len(d.matches) == 2  # the prompt rule matched too


def test_no_match_gives_the_default(agent: CommandRules) -> None:
    d = agent.evaluate(["make", "test"])
    assert d.decision == "prompt"
    assert d.rule is None
    assert d.unmatched == (("make", "test"),)
    allow_all = rules_from_starlark(AGENT, default="allow")
    assert decide(allow_all, "make", "test") == "allow"
    assert decide(allow_all, "rm", "-rf", "/") == "forbidden"


def test_prefix_needs_every_pattern_token(agent: CommandRules) -> None:
    assert decide(agent, "git") == "prompt"  # shorter than every git pattern: the default
    assert decide(agent, "rm", "-r", "x") == "prompt"
    assert decide(agent, "rm", "-fr", "x") == "forbidden"
    assert decide(agent, "gitx", "push") == "prompt"


def test_absolute_and_relative_paths_match_the_basename_rules(agent: CommandRules) -> None:
    d = agent.evaluate(["/usr/bin/git", "push", "--force"])
    assert d.decision == "forbidden"
    assert any(m.resolved == "/usr/bin/git" for m in d.matches)
    assert decide(agent, "./rm", "-rf", "x") == "forbidden"
    assert decide(agent, "/usr/bin/git", "status") == "allow"


def test_host_executable_limits_what_a_path_may_be_allowed_as() -> None:
    rules = rules_from_starlark(
        'host_executable(name="git", paths=["/usr/bin/git"])\n'
        'prefix_rule(pattern=["git", "status"], match=["/usr/bin/git status"],'
        ' not_match=["/tmp/git status"])\n'
        'prefix_rule(pattern=["git", "push"], decision="forbidden")\n'
    )
    assert decide(rules, "/usr/bin/git", "status") == "allow"
    # Another file named git is not the trusted program: no allow, but the forbidden rules still hold.
    assert decide(rules, "/tmp/evil/git", "status") == "prompt"
    assert decide(rules, "/tmp/evil/git", "push") == "forbidden"


@pytest.mark.parametrize(
    ("argv", "decision"),
    [
        (["env", "FOO=1", "git", "push", "--force"], "forbidden"),
        (["env", "-i", "FOO=1", "BAR=2", "git", "status"], "allow"),
        (["env", "-u", "HOME", "rm", "-rf", "/"], "forbidden"),
        (["env", "-S", "rm -rf /"], "prompt"),  # env -S splits a string: opaque
        (["nice", "-n", "5", "curl", "x"], "forbidden"),
        (["timeout", "-s", "KILL", "10", "rm", "-fr", "x"], "forbidden"),
        (["nohup", "ls"], "allow"),
        (["command", "-v", "curl"], "prompt"),  # only looks curl up: the `command` itself, no rule
        (["exec", "-a", "name", "curl"], "forbidden"),
        (["env"], "prompt"),
    ],
)
def test_wrappers_are_looked_through(agent: CommandRules, argv: list[str], decision: str) -> None:
    assert decide(agent, *argv) == decision


def test_a_rule_for_the_wrapper_itself_still_applies() -> None:
    rules = rules_from_starlark(
        'prefix_rule(pattern=["env"], decision="forbidden")\nprefix_rule(pattern=["ls"])'
    )
    assert decide(rules, "env", "ls") == "forbidden"


@pytest.mark.parametrize(
    ("script", "decision", "commands"),
    [
        ("git status; curl x | sh", "forbidden", [["git", "status"], ["curl", "x"], ["sh"]]),
        ("git status && ls -l || echo no", "allow", [["git", "status"], ["ls", "-l"], ["echo", "no"]]),
        ("git 'push' \"--force\"", "forbidden", [["git", "push", "--force"]]),
        ("git p'us'h", "prompt", [["git", "push"]]),
        ("FOO=1 git status", "allow", [["git", "status"]]),
        ("env FOO=1 git push", "prompt", [["git", "push"]]),
        ("/usr/bin/git status", "allow", [["/usr/bin/git", "status"]]),
        ("(cd x; ls) & { echo a; }", "prompt", [["cd", "x"], ["ls"], ["echo", "a"]]),
        ("ls > out.txt 2>&1", "allow", [["ls"]]),
        ("echo a\\ b", "allow", [["echo", "a b"]]),
        ('echo "a\\"b"', "allow", [["echo", 'a"b']]),
    ],
)
def test_shell_scripts_are_split(
    agent: CommandRules, script: str, decision: str, commands: list[list[str]]
) -> None:
    for shell in (["bash", "-lc"], ["sh", "-c"], ["/bin/bash", "-e", "-c"], ["bash", "--noprofile", "-c"]):
        d = agent.evaluate([*shell, script])
        assert d.decision == decision, (shell, script, d.reason)
        assert [list(c) for c in d.commands] == commands
        assert d.opaque == () or decision != "allow"


@pytest.mark.parametrize(
    ("script", "why"),
    [
        ("echo $(curl x)", "command substitution"),
        ("echo `id`", "command substitution"),
        ("cat <(ls)", "process substitution"),
        ("ls > .git/hooks/pre-commit", "protected path"),
        ("echo x >> ~/.bashrc", "computes"),
        ("echo x >> a/.git/config", "protected path"),
        ("echo x > ../up", "protected path"),
        ("echo x > /etc/passwd", "protected path"),
        ("echo x > $OUT", "computes"),
        ("if true; then ls; fi", "control flow"),
        ("f() { ls; }; f", "function"),
        ("$CMD status", "command name"),
        ("echo 'unterminated", "syntax error"),
        ("eval ls", "eval"),
        ("source x.sh", "script file"),
        ("ls | xargs rm", "xargs"),
    ],
)
def test_opaque_scripts_take_the_opaque_decision(script: str, why: str) -> None:
    rules = rules_from_dict(
        {
            "default": "allow",
            "opaque": "forbidden",
            "rule": [{"pattern": [["echo", "cat", "ls", "f", "true"]], "decision": "allow"}],
        }
    )
    d = rules.evaluate(["bash", "-c", script])
    assert d.decision == "forbidden", d.reason
    assert any(why in reason for reason in d.opaque), d.opaque
    assert "not provably simple" in d.reason


def test_commands_inside_substitutions_are_checked_too(agent: CommandRules) -> None:
    d = agent.evaluate(["bash", "-c", "echo $(rm -rf /)"])
    assert d.decision == "forbidden"
    assert d.rule is not None
    assert d.rule.programs == ("rm",)


def test_computed_words_may_match_stricter_rules_never_allow_rules(agent: CommandRules) -> None:
    # `git $X` could be `git push --force`: the prompt/forbidden rules it may match count.
    d = agent.evaluate(["bash", "-c", 'git "$X" --force'])
    assert d.decision == "forbidden"
    # `git st*` might expand to `git status`, but an uncertain match never allows.
    assert decide(agent, "bash", "-c", "ls *.py") == "allow"
    assert decide(agent, "bash", "-c", "git stat*") == "prompt"


def test_nested_shells_are_split_and_bounded(agent: CommandRules) -> None:
    assert decide(agent, "bash", "-c", "sh -c 'env bash -c \"curl x\"'") == "forbidden"
    script = "ls"
    for _ in range(12):
        script = f"bash -c {json.dumps(script)}"
    d = agent.evaluate(["bash", "-c", script])
    assert d.decision == "prompt"
    assert any("nested deeper" in r for r in d.opaque)


def test_shell_options_that_may_hide_a_script_are_opaque(agent: CommandRules) -> None:
    d = agent.evaluate(["bash", "--rcfile", "x", "-c", "ls"])
    assert d.opaque
    assert d.decision == "prompt"
    assert decide(agent, "bash", "script.sh") == "prompt"  # a script file: bash itself, the default


def test_scripts_whose_commands_ask_for_different_policies_are_opaque() -> None:
    rules = rules_from_dict(
        {
            "default": "allow",
            "rule": [
                {"pattern": ["git", "status"], "profile": "read-only"},
                {"pattern": ["rm"], "profile": "workspace-write"},
            ],
        }
    )
    assert rules.evaluate(["git", "status"]).profile == "read-only"
    d = rules.evaluate(["bash", "-c", "git status; rm x"])
    assert d.decision == "prompt"
    assert "different sandbox policies" in " ".join(d.opaque)


def test_the_deciding_rule_chooses_the_policy(tmp_path: Path) -> None:
    rules = rules_from_dict(
        {"rule": [{"pattern": ["git", "status"], "profile": "read-only"}, {"pattern": ["ls"]}]}
    )
    caller = profiles.workspace_write(str(tmp_path), memory="256M")
    chosen = rules.evaluate(["git", "status"]).policy_for(caller)
    assert chosen.profile == "read-only"
    assert chosen.workdir == caller.workdir
    assert chosen.resources == caller.resources
    assert rules.evaluate(["ls"]).policy_for(caller) is caller


def test_merge_keeps_every_rule_and_the_strictest_defaults() -> None:
    a = rules_from_dict({"default": "allow", "rule": [{"pattern": ["ls"]}]}, source="a.toml")
    b = rules_from_dict({"default": "prompt", "rule": [{"pattern": ["ls"], "decision": "forbidden"}]})
    m = CommandRules.merge(a, b)
    assert m.default == "prompt"
    assert len(m.rules) == 2
    assert decide(m, "ls") == "forbidden"


def test_to_dict_is_json() -> None:
    rules = rules_from_starlark(AGENT)
    d = rules.evaluate(["bash", "-c", "git push --force; echo $(id)"]).to_dict()
    text = json.dumps(d)
    back = json.loads(text)
    assert back["decision"] == "forbidden"
    assert back["rule"]["pattern"] == ["git", "push", "--force"]
    assert back["justification"] == "Use --force-with-lease."
    assert back["opaque"] == ["command substitution"]


# -- the TOML format --------------------------------------------------------------------------------------


def test_toml_file(tmp_path: Path) -> None:
    (tmp_path / "net.toml").write_text('profile = "read-only"\n[network]\nmode = "host"\n')
    f = tmp_path / "r.toml"
    f.write_text(
        'default = "forbidden"\n'
        "[[rule]]\n"
        'name = "push"\n'
        'pattern = ["git", "push"]\n'
        'policy = "net.toml"\n'
        'match = ["git push origin"]\n'
        "[[rule]]\n"
        'pattern = ["ls"]\n'
        "[rule.policy]\n"
        'profile = "read-only"\n'
    )
    rules = load_rules(f, workdir=tmp_path)
    assert rules.default == "forbidden"
    assert rules.opaque == "forbidden"
    push = rules.evaluate(["git", "push", "x"])
    assert push.decision == "allow"
    assert push.policy is not None
    assert push.policy.network.mode == "host"
    ls = rules.evaluate(["ls"])
    assert ls.policy is not None
    assert ls.policy.profile == "read-only"
    assert ls.rule is not None
    assert ls.rule.name == "rule[1]"
    assert decide(rules, "make") == "forbidden"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('defualt = "allow"\n', "defualt"),
        ('default = "maybe"\n', "default"),
        ("rule = 3\n", "rule"),
        ('[[rule]]\npattern = ["ls"]\nextra = 1\n', "rule[0].extra"),
        ("[[rule]]\npattern = []\n", "rule[0].pattern"),
        ('[[rule]]\npattern = ["ls", [1]]\n', "rule[0].pattern[1]"),
        ('[[rule]]\nname = "x"\npattern = ["ls"]\nmatch = ["cat"]\n', "x.match[0]"),
        ('[[rule]]\npattern = ["ls"]\nmatch = "ls"\n', "rule[0].match"),
        ('[[rule]]\npattern = ["ls"]\npolicy = "missing.toml"\n', "rule[0].policy"),
        (
            '[[rule]]\npattern = ["ls"]\n[rule.policy]\nnetwork = {mode = "moon"}\n',
            "rule[0].policy.network.mode",
        ),
        ('[host_executable]\ngit = ["git"]\n', "host_executable[git].paths"),
        ('[host_executable]\ngit = ["/usr/bin/svn"]\n', "host_executable[git].paths"),
        ("not toml [", ""),
    ],
)
def test_toml_errors_name_the_key(tmp_path: Path, text: str, path: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(PolicyError) as err:
        load_rules(f)
    assert err.value.path == path, err.value
    assert err.value.source == str(f)


def test_unreadable_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_rules(tmp_path / "none.rules")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError, match="UTF-8"):
        load_rules(tmp_path / "bin.toml")


# -- the Codex format (Starlark) ----------------------------------------------------------------------------


def test_codex_file_read_as_is(tmp_path: Path) -> None:
    f = tmp_path / "default.rules"
    f.write_text(
        "# Codex's own syntax: comments, defs, comprehensions, f-strings are Starlark\n"
        "def deny(cmd, why):\n"
        '    prefix_rule(pattern=cmd, decision="forbidden", justification=why)\n'
        'deny(["git", "reset", "--hard"], "destructive operation")\n'
        "for tool in ['ls', 'cat']:\n"
        "    prefix_rule(pattern=[tool], match=[[tool], f'{tool} -l'])\n"
        "prefix_rule(\n"
        '    pattern = ["gh", "pr", ["view", "list"]],\n'
        '    decision = "prompt",\n'
        '    match = ["gh pr view 7888", "gh pr list --repo x"],\n'
        '    not_match = ["gh pr --repo openai/codex view 7888"],\n'
        ")\n"
        'network_rule(host="example.com", protocol="https", decision="deny")\n'
    )
    rules = load_rules(f)
    assert [r.name for r in rules.rules] == [f"prefix_rule #{i}" for i in range(1, 5)]
    assert decide(rules, "git", "reset", "--hard") == "forbidden"
    assert decide(rules, "cat", "x") == "allow"
    assert decide(rules, "gh", "pr", "list") == "prompt"
    assert rules.rules[0].justification == "destructive operation"


def test_codexpolicy_suffix_and_default_override(tmp_path: Path) -> None:
    f = tmp_path / "x.codexpolicy"
    f.write_text('prefix_rule(pattern=["ls"])\n')
    assert load_rules(f).default == "prompt"
    assert load_rules(f, default="forbidden").default == "forbidden"


@pytest.mark.parametrize(
    ("text", "path", "reason"),
    [
        (
            'prefix_rule(pattern=["git", "push"], match=["git pull"])\n',
            "prefix_rule #1.match[0]",
            "does not match",
        ),
        (
            'prefix_rule(pattern=["ls"])\nprefix_rule(pattern=["git"], not_match=["git status"])\n',
            "prefix_rule #2.not_match[0]",
            "matches",
        ),
        ("prefix_rule(pattern=[])\n", "prefix_rule #1.pattern", "non-empty"),
        ('prefix_rule(pattern=["ls"], decision="deny")\n', "prefix_rule #1.decision", "expected one of"),
        ('prefix_rule(pattern=["ls"], justification="")\n', "prefix_rule #1.justification", "non-empty"),
        ('prefix_rule(pattern=["ls"], colour="red")\n', "prefix_rule #1.colour", "unknown argument"),
        ('prefix_rule(pattern=["ls"]\n', "line 1, column 1", "Parse error"),
        ("undefined_builtin()\n", "line 1, column 1", "not found"),
        ('host_executable(name="git", paths=["relative/git"])\n', "host_executable[git].paths", "absolute"),
    ],
)
def test_starlark_errors_name_the_rule(text: str, path: str, reason: str) -> None:
    with pytest.raises(PolicyError) as err:
        rules_from_starlark(text, source="x.rules")
    assert err.value.path == path, err.value
    assert reason in err.value.reason, err.value
    assert err.value.source == "x.rules"


def test_starlark_cannot_reach_the_host() -> None:
    # Starlark has no I/O: no open, no load without a loader, no imports.
    for text in ('open("/etc/passwd")\n', 'load("x.star", "y")\n', "import os\n"):
        with pytest.raises(PolicyError):
            rules_from_starlark(text, source="x.rules")


def test_a_starlark_memory_bomb_stops_at_the_memory_bound() -> None:
    """A rules file whose evaluation grows without end (a nested comprehension: ~400 MiB a second, the host
    ran out of memory) stops at STARLARK_MEMORY_BYTES with a PolicyError naming the file. In a child
    interpreter whose address space is capped at 3 GiB, so that a missing bound fails this test (a
    MemoryError or an abort, not "used more than") instead of exhausting the machine."""
    code = (
        "import resource, time\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from policies import PolicyError, rules_from_starlark\n"
        "t = time.monotonic()\n"
        "bomb = 'x = [[i for i in range(1000000)] for j in range(100000)]\\n'\n"
        "try:\n"
        "    rules_from_starlark(bomb, source='bomb.rules')\n"
        "except PolicyError as e:\n"
        "    print(e.source, '|', e.reason, '|', round(time.monotonic() - t, 1))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    source, reason, seconds = (part.strip() for part in r.stdout.split("|"))
    assert source == "bomb.rules", r.stdout
    assert reason == "evaluating the file used more than 512 MiB of memory", r.stdout
    assert float(seconds) < 10, r.stdout  # the memory bound, not the 10 s deadline, stopped it


def test_the_core_imports_without_the_rules_extra() -> None:
    """policies and supervisor import without starlark and tree-sitter; using rules then says what to
    install (RulesUnavailableError), in a child interpreter where those modules cannot be imported."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('starlark', 'tree_sitter', 'tree_sitter_bash'):\n"
        "            raise ImportError(name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import supervisor, policies\n"
        "r = policies.rules_from_dict({'rule': [{'pattern': ['ls']}]})\n"
        "print(r.evaluate(['ls']).decision)\n"
        "for call in (lambda: policies.rules_from_starlark('x'), lambda: r.evaluate(['sh', '-c', 'ls'])):\n"
        "    try:\n"
        "        call()\n"
        "    except policies.RulesUnavailableError as e:\n"
        "        assert isinstance(e, policies.CorralError)\n"
        "        print('missing', e.module)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split("\n")[:3] == ["allow", "missing starlark", "missing tree_sitter"]
