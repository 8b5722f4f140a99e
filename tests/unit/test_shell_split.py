"""The shell-script splitter (policies/_shell.py) against bash itself, by property: whatever argv a script
is split into must be the argv bash runs, and no text makes the splitter raise or vouch for a script it
cannot see through. bash is run here only to print its words (`printf '%s\\0'`), never a generated
command."""

from __future__ import annotations

import atexit
import re
import shlex
import shutil
import subprocess
import tempfile

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from policies._shell import protected_target, split_script

BASH = shutil.which("bash")

#: Where bash runs: an empty directory of its own, outside the checkout.
SCRATCH = tempfile.mkdtemp(prefix="corral-shell-split-")
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)

#: A word shlex leaves unquoted that bash reads as an assignment when it comes first (`A=1 cmd`).
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")

#: Words: printable text without NUL (argv cannot hold one), including quotes, spaces, $, globs, unicode.
WORD = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=12,
)
ARGV = st.lists(WORD, min_size=1, max_size=6)
SEPARATORS = st.sampled_from([";", "&&", "||", "|", "\n", "&"])


def bash_commands(script: str) -> list[list[str]]:
    """The argv of every command bash runs for `script`: with no PATH, every command name that is not a
    builtin goes to bash's command_not_found_handle, which prints its words and runs nothing."""
    assert BASH is not None
    handler = "command_not_found_handle() { printf '%s\\0' \"$@\"; printf '\\1'; }\n"
    ran = subprocess.run(
        [BASH, "--norc", "--noprofile", "-c", handler + script],
        capture_output=True,
        timeout=10,
        cwd=SCRATCH,  # never the checkout: a generated script must not leave files where `git add` sees them
        env={"PATH": "/nonexistent", "LC_ALL": "C.UTF-8"},
        check=False,
    )
    if b"syntax error" in ran.stderr:  # not the exit status: `! cmd` exits 1 when cmd succeeds
        raise SyntaxError(ran.stderr.decode(errors="replace"))
    text = ran.stdout.decode("utf-8", "surrogateescape")
    return [c.split("\x00")[:-1] for c in text.split("\x01")[:-1]]


@settings(max_examples=300, deadline=None)
@given(ARGV)
def test_quoted_argv_round_trips(argv: list[str]) -> None:
    """shlex.join(argv) is split back into exactly argv, or found opaque (never a different argv)."""
    assume(not ASSIGNMENT.match(argv[0]))  # `A=x cmd`: bash takes it as an assignment, not a word
    split = split_script(shlex.join(argv))
    if split.opaque:
        return
    assert len(split.commands) == 1
    for w, a in zip(split.commands[0], argv, strict=True):
        # Unknown (None) only where bash could expand the word; quoted, nothing expands, so never else.
        assert w == a or (w is None and any(c in a for c in "*?[]{}~")), (w, a)


@settings(max_examples=200, deadline=None)
@given(st.lists(ARGV, min_size=1, max_size=4), st.lists(SEPARATORS, min_size=3, max_size=3))
def test_command_lists_split_in_order(commands: list[list[str]], seps: list[str]) -> None:
    assume(not any(ASSIGNMENT.match(argv[0]) for argv in commands))
    script = shlex.join(commands[0])
    for sep, argv in zip(seps, commands[1:], strict=False):
        script += f" {sep} " + shlex.join(argv)
    split = split_script(script)
    if split.opaque:
        return
    assert len(split.commands) == len(commands)
    for got, argv in zip(split.commands, commands, strict=True):
        assert all(w is None or w == a for w, a in zip(got, argv, strict=True)), (got, argv)


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet="ab '\"\\$*?{},;~-=x\t!()#0\n", min_size=1, max_size=16))
@example("a#\n=")  # the grammar: an assignment with a comment in it; bash: the commands `a#` and `=`
def test_every_command_it_vouches_for_is_the_command_bash_runs(script: str) -> None:
    """Random shell text (quotes, escapes, globs, braces, $, ~, !, subshells, comments, lists): whenever
    the splitter vouches for a script (not opaque, every word known), bash runs exactly those commands with
    exactly those words. (Pipes, redirections and `&` are left out: they reorder or swallow what the
    handler prints, not what bash runs.)"""
    split = split_script(script)
    if split.opaque or any(w is None for c in split.commands for w in c):
        return
    try:
        ran = bash_commands(script)
    except SyntaxError:
        pytest.fail(f"the splitter vouched for {script!r}, which bash refuses")
    assert ran == [list(c) for c in split.commands], script


@pytest.mark.parametrize(
    "script",
    [
        "1=x",  # not an assignment to bash: a command named `1=x`
        "!{a-",  # one word to bash (`!` is the keyword only before a blank); the grammar negates `{a-`
        "= ;;",  # `;;` outside case: bash refuses the script
        "} {",
        "a}\\~",
        "a={\\0",  # one assignment word to bash; an assignment `a={` and a command `\\0` to the grammar
        "\\ x",  # the grammar skips the escaped blank that bash keeps
        "={,}",
        "{}",  # a command named `{}` to bash; an empty group to the grammar
        "0\\\n0",  # a line continuation joins `00` in bash
        "0\n\\\n;",  # `;` at the start of a line: bash refuses it
        "0\n\\\n0",
    ],
)
def test_scripts_the_grammar_reads_otherwise_are_opaque_or_unknown(script: str) -> None:
    split = split_script(script)
    assert split.opaque or any(w is None for c in split.commands for w in c), split


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_split_or_opaque_never_raises(script: str) -> None:
    split = split_script(script)
    for command in split.commands:
        assert all(w is None or isinstance(w, str) for w in command)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="$()`<>|;&{}[]*'\"\\ abc=\n", max_size=60))
def test_substitutions_are_never_vouched_for(script: str) -> None:
    """A script with `$(` or a backtick that the grammar reads as a substitution is opaque."""
    split = split_script(script)
    if "$(" in script and not split.opaque:
        # Quoted or escaped: then bash does not substitute either (checked against bash when it parses).
        if BASH is not None:
            r = subprocess.run([BASH, "-n", "-c", script], capture_output=True, timeout=10, cwd=SCRATCH)
            assert r.returncode == 0, script
        assert all(
            "$(" not in " ".join(w or "" for w in c) or "'" in script or "\\" in script
            for c in split.commands
        )


@pytest.mark.parametrize("script", ["a#\n=", "curl#\n=x", "a#\n=b c"])
def test_a_comment_between_a_name_and_its_equals_sign_is_not_an_assignment(script: str) -> None:
    # The grammar reads `a#<newline>=x` as the assignment a=x with a comment inside; bash runs the command
    # `a#`, then the command `=x`. Vouched for, the rules would see no command where bash runs two.
    assert split_script(script).opaque


def test_deep_nesting_does_not_exhaust_the_stack() -> None:
    split = split_script("(" * 3000 + "ls" + ")" * 3000)
    assert split.commands == (("ls",),) or split.opaque


@pytest.mark.parametrize(
    ("path", "protected"),
    [
        ("out.txt", False),
        ("build/log", False),
        ("/dev/null", False),
        ("/tmp/x", False),
        ("/tmp/../etc/passwd", True),
        ("/tmp/./x", False),
        (".git/config", True),
        ("sub/.git/hooks/pre-commit", True),
        ("../x", True),
        ("~/.bashrc", True),
        ("/etc/passwd", True),
        ("/home/u/.ssh/authorized_keys", True),
        ("/home/u/project/out.log", False),
        ("./build.log", False),
        ("/var/tmp/x", False),
        ("/srv/repo/out", False),
        ("/usr/local/bin/tool", True),
        (".bashrc", True),
        ("/proc/self/attr/current", True),
    ],
)
def test_protected_targets(path: str, protected: bool) -> None:
    assert protected_target(path) is protected
