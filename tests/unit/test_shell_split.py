"""The shell-script splitter (policies/_shell.py) against bash itself, by property: whatever argv a script
is split into must be the argv bash runs, and no text makes the splitter raise or vouch for a script it
cannot see through. bash is run here only to print its words (`printf '%s\\0'`), never a generated
command."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies._shell import protected_target, split_script

BASH = shutil.which("bash")

#: Words: printable text without NUL (argv cannot hold one), including quotes, spaces, $, globs, unicode.
WORD = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=12,
)
ARGV = st.lists(WORD, min_size=1, max_size=6)
SEPARATORS = st.sampled_from([";", "&&", "||", "|", "\n", "&"])


def bash_words(script: str) -> list[str]:
    """The argv bash makes of `script` (one simple command): with no PATH, every command name that is not a
    builtin goes to bash's command_not_found_handle, which prints its words and runs nothing."""
    assert BASH is not None
    handler = "command_not_found_handle() { printf '%s\\0' \"$@\"; }\n"
    out = subprocess.run(
        [BASH, "--norc", "--noprofile", "-c", handler + script],
        capture_output=True,
        check=True,
        timeout=10,
        env={"PATH": "/nonexistent", "LC_ALL": "C.UTF-8"},
    ).stdout
    return out.decode("utf-8", "surrogateescape").split("\x00")[:-1]


@settings(max_examples=300, deadline=None)
@given(ARGV)
def test_quoted_argv_round_trips(argv: list[str]) -> None:
    """shlex.join(argv) is split back into exactly argv, or found opaque (never a different argv)."""
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
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(st.text(alphabet="ab '\"\\$*?{},;~-=x\t", min_size=1, max_size=8), min_size=1, max_size=4))
def test_every_word_it_vouches_for_is_the_word_bash_makes(parts: list[str]) -> None:
    """Random shell text (quotes, escapes, globs, braces, $, ~): whenever the splitter returns one simple
    command with every word known and nothing opaque, bash makes exactly those words of it."""
    script = " ".join(parts)
    split = split_script(script)
    if split.opaque or len(split.commands) != 1 or any(w is None for w in split.commands[0]):
        return
    try:
        words = bash_words(script)
    except subprocess.CalledProcessError:
        pytest.fail(f"the splitter vouched for {script!r}, which bash refuses")
    assert list(split.commands[0]) == words, script


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
            r = subprocess.run([BASH, "-n", "-c", script], capture_output=True, timeout=10)
            assert r.returncode == 0, script
        assert all(
            "$(" not in " ".join(w or "" for w in c) or "'" in script or "\\" in script
            for c in split.commands
        )


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
