"""Shell scripts split into their simple commands, by a real bash parser (tree-sitter's bash grammar).

`bash -lc "git status; curl x | sh"` runs two programs the command rules must each see. This module turns
the script into the argv of every simple command in it, and says when it cannot prove the script is only
that: a command or process substitution, an `eval`-like construct the rules cannot see into, control flow,
a function definition, a redirection that writes into a protected path, or anything the grammar flags as
an error. Such a script is `opaque` (docs/rules.md, "Shell scripts"): the rules give it their opaque
decision, whatever its visible commands say.

A word whose value only bash knows at run time (a variable, a glob, `~`, a brace expansion) is kept as
None: the rules treat it as "could be anything" (it may match a stricter rule, never an allow rule).

Pure data: no process is started, nothing is read. Needs the `rules` extra (tree-sitter, tree-sitter-bash);
`parser()` raises RulesUnavailableError without it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from policies._errors import CorralError, printable

#: Nodes that only group or sequence commands: safe to look through.
_STRUCTURE = frozenset(
    {
        "program",
        "list",
        "pipeline",
        "subshell",
        "compound_statement",
        "redirected_statement",
        "negated_command",
        "comment",
        "variable_assignments",
        ";",
        "&",
        "&&",
        "||",
        "|",
        "|&",
        "!",
        "(",
        ")",
        "{",
        "}",
        "\n",
    }
)

#: Tokens that continue a command list: never at the start of a line.
_OPERATORS = frozenset({";", "&", "&&", "||", "|", "|&"})

#: Word nodes: their text is an argument (or a command name).
_WORDS = frozenset(
    {
        "word",
        "string",
        "raw_string",
        "ansi_c_string",
        "translated_string",
        "concatenation",
        "number",
        "simple_expansion",
        "expansion",
        "arithmetic_expansion",
        "command_substitution",
        "process_substitution",
    }
)

#: Why a node makes the script opaque, by node type (anything else not listed here is opaque too).
_OPAQUE_WHY = {
    "command_substitution": "command substitution",
    "process_substitution": "process substitution",
    "function_definition": "function definition",
    "if_statement": "control flow (if)",
    "while_statement": "control flow (while)",
    "for_statement": "control flow (for)",
    "c_style_for_statement": "control flow (for)",
    "case_statement": "control flow (case)",
    "test_command": "test expression",
    "declaration_command": "declaration (declare, export, local, readonly)",
    "unset_command": "unset",
}


#: bash's reserved words: as a bare command name, bash reads them as syntax (or refuses the script).
_RESERVED = frozenset(
    [
        "!",
        "[[",
        "]]",
        "{",
        "}",
        "case",
        "coproc",
        "do",
        "done",
        "elif",
        "else",
        "esac",
        "fi",
        "for",
        "function",
        "if",
        "in",
        "select",
        "then",
        "time",
        "until",
        "while",
    ]
)

#: A shell variable name.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: Write-redirection targets that are always harmless.
_HARMLESS_TARGETS = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/tty"})

#: Top-level directories a script writing into is never simple: the system's, and the kernel's views.
_SYSTEM_DIRS = frozenset(
    ["etc", "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "boot", "root", "proc", "sys", "dev"]
)

#: Redirection operators that only read.
_READ_OPS = frozenset({"<", "<&", "<&-"})


class RulesUnavailableError(CorralError, ImportError):
    """A command-rules feature was used without its optional dependencies (`pip install 'corral[rules]'`).

    `module` is the missing import, `feature` what needed it.
    """

    def __init__(self, module: str, feature: str) -> None:
        self.module = module
        self.feature = feature
        super().__init__(
            f"{feature} needs the optional module {module!r}: install corral's `rules` extra "
            "(pip install 'corral[rules]')"
        )


@functools.cache
def parser() -> Any:
    """The tree-sitter parser for bash, made once. Raises RulesUnavailableError without tree-sitter."""
    try:
        import tree_sitter
        import tree_sitter_bash
    except ImportError as err:
        raise RulesUnavailableError(err.name or "tree_sitter", "splitting shell scripts") from err
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_bash.language()))


@dataclass(frozen=True, slots=True)
class ShellSplit:
    """The simple commands of a script, in order, and why it is not provably only them (empty: it is).

    commands: each simple command's argv; a word bash would expand at run time is None.
    opaque:   reasons, one per construct the rules cannot see through (deduplicated, in order).
    assigned: the variables the script assigns (`PATH=x cmd`, `PATH=x; cmd`: both change what a later
              command finds and loads), deduplicated, in order.
    """

    commands: tuple[tuple[str | None, ...], ...]
    opaque: tuple[str, ...]
    assigned: tuple[str, ...] = ()


def split_script(script: str) -> ShellSplit:
    """Parse `script` as bash and return its simple commands and the reasons it is opaque, if any.

    Never raises for any text (a grammar error makes the script opaque); raises RulesUnavailableError when
    tree-sitter is not installed.
    """
    data = script.encode("utf-8", "surrogateescape")
    tree = parser().parse(data)
    commands: list[tuple[str | None, ...]] = []
    opaque: list[str] = []
    assigned: list[str] = []

    def why(reason: str) -> None:
        if reason not in opaque:
            opaque.append(reason)

    if b"\x00" in data:
        why("a NUL byte in the script")
    root = tree.root_node
    if root.has_error:
        why("a syntax error (the grammar could not parse it)")
    if not _covered(root, data):
        why("text the grammar skipped (an escape bash reads otherwise)")
    # Iterative walk: a deeply nested script must not exhaust Python's recursion limit.
    stack = [root]
    while stack:
        node = stack.pop()
        kind = node.type
        if kind == "command":
            commands.append(_command(node, why, assigned))
            # Substitutions inside the command's words still run: look for their commands too.
            stack.extend(reversed(_nested(node)))
        elif kind in ("file_redirect", "heredoc_redirect", "herestring_redirect"):
            _redirect(node, why)
            stack.extend(reversed(_nested(node)))
        elif kind == "variable_assignment":
            _assignment(node, why, assigned)
            stack.extend(reversed(_nested(node)))
        elif kind in _STRUCTURE:
            if kind in ("compound_statement", "subshell") and not any(
                c.type != "comment" for c in node.named_children
            ):
                why("an empty group (bash refuses it)")
            for i, child in enumerate(node.children):
                if not child.is_named and child.type not in _STRUCTURE:
                    why(f"an unsupported construct ({child.type})")
                elif (
                    child.type in ("!", "{")
                    and i + 1 < node.child_count
                    and node.children[i + 1].start_byte == child.end_byte
                ):
                    # `!x`, `{}`, `{ls;}`: words to bash (these keywords need a blank after them).
                    why("a word the grammar and bash may read differently")
            stack.extend(reversed(node.named_children))
        elif kind == "ERROR" or node.is_missing:
            why("a syntax error (the grammar could not parse it)")
            stack.extend(reversed(node.named_children))
        else:
            # Keywords and punctuation are unnamed nodes: only the named ones can hold commands.
            why(_OPAQUE_WHY.get(kind, f"an unsupported construct ({kind})"))
            stack.extend(reversed(node.named_children))
    return ShellSplit(tuple(commands), tuple(opaque), tuple(dict.fromkeys(assigned)))


def _covered(root: Any, data: bytes) -> bool:
    """True when every byte of the script the grammar did not put in a node is one it may skip: blanks,
    newlines and line continuations. The grammar skips some escapes (a leading `\\ `, an escaped tab) that
    bash keeps as part of a word: then its words cannot be trusted."""
    pos = 0
    stack = [root]
    while stack:
        node = stack.pop()
        if node.child_count == 0:
            gap = data[pos : node.start_byte]
            if pos and node.start_byte > pos and not _skippable(gap):
                return False
            if not pos and gap and not _skippable(gap, leading=True):
                return False
            if node.type in _OPERATORS and b"\n" in gap.replace(b"\\\n", b""):
                return False  # a newline ends the command: bash refuses an operator at a line's start
            pos = max(pos, node.end_byte)
        else:
            stack.extend(reversed(node.children))
    return pos >= len(data) or _skippable(data[pos:], leading=True)


def _skippable(gap: bytes, leading: bool = False) -> bool:
    """A gap between two tokens is blanks and newlines, with line continuations (`\\` newline) only right
    after a blank (`cmd \\` newline `--flag`): bash removes a continuation and joins what is around it
    (`a\\` newline `b` is `ab`), which the grammar takes for a blank."""
    if gap.replace(b"\\\n", b"").strip(b" \t\r\n"):
        return False
    at = gap.find(b"\\\n")
    while at != -1:
        if at == 0 or gap[at - 1 : at] not in (b" ", b"\t"):
            return False
        at = gap.find(b"\\\n", at + 2)
    return leading or gap == b"" or bool(gap.strip(b"\\"))


def _nested(node: Any) -> list[Any]:
    """The substitutions anywhere below `node` (not below another substitution: those are found in turn),
    as nodes to walk: their commands run too."""
    found: list[Any] = []
    stack = list(node.children)
    while stack:
        n = stack.pop()
        if n.type in ("command_substitution", "process_substitution"):
            found.append(n)
        else:
            stack.extend(n.children)
    return found


def _command(node: Any, why: Any, assigned: list[str]) -> tuple[str | None, ...]:
    """One simple command's argv (prefix assignments dropped; redirections checked, not kept)."""
    argv: list[str | None] = []
    end = -1
    for child in node.children:
        kind = child.type
        if child.start_byte == end and kind in (*_WORDS, "command_name", "variable_assignment"):
            # Two word nodes with nothing between them: bash makes one word of them (`a}\~`; `a={\0`, an
            # assignment to bash, an assignment and a command `\0` to the grammar), the grammar two. Not
            # vouched for.
            why("a word the grammar and bash may read differently")
        end = child.end_byte
        if kind == "variable_assignment":
            _assignment(child, why, assigned)
            continue  # FOO=1 cmd: the environment of cmd, not a word of its argv
        if kind == "command_name":
            inner = child.children[0] if child.children else child
            argv.append(_word(inner, why))
        elif kind in _WORDS:
            argv.append(_word(child, why))
        elif kind in ("file_redirect", "heredoc_redirect", "herestring_redirect"):
            _redirect(child, why)
        elif kind == "comment":
            continue
        else:
            why(_OPAQUE_WHY.get(kind, f"an unsupported construct ({kind})"))
            argv.append(None)
    if argv and argv[0] is None:
        why("a command name bash computes at run time")
    elif argv and argv[0] in _RESERVED and node.child_count and node.children[0].type == "command_name":
        why(f"a reserved word as a command name ({argv[0]})")
    return tuple(argv)


def _assignment(node: Any, why: Any, assigned: list[str]) -> None:
    """An assignment bash would not take as one (`1=x`: a name cannot start with a digit, so bash runs a
    command of that name) is a place where the grammar and bash disagree. The name assigned is added to
    `assigned` (as written, for a message)."""
    name = node.children[0] if node.children else None
    assigned.append(printable(_text(name), 64) if name is not None else "?")
    if name is not None and name.type == "subscript":
        return  # a[0]=x: an array element
    if name is None or name.type != "variable_name" or not _IDENTIFIER.fullmatch(_text(name)):
        why("a word the grammar and bash may read differently")
        return
    # The operator right after the name: `a#\n=x` is an assignment with a comment inside to the grammar,
    # but to bash the command `a#`, then the command `=x`.
    op = node.children[1] if len(node.children) > 1 else None
    if op is None or op.type not in ("=", "+=") or op.start_byte != name.end_byte:
        why("a word the grammar and bash may read differently")


def _redirect(node: Any, why: Any) -> None:
    """Check a redirection: a write into a protected path, or to a target bash computes, is opaque."""
    if node.type != "file_redirect":
        return  # here-documents and here-strings feed stdin; substitutions in them are walked for
    ops = [c for c in node.children if c.type not in _WORDS and c.type != "file_descriptor"]
    op = _text(ops[0]) if ops else ""
    targets = [c for c in node.children if c.type in _WORDS]
    if op in _READ_OPS:
        return
    if op in (">&", "&>") and targets and targets[0].type == "number":
        return  # 2>&1: a dup of another fd, no file
    if op == ">&" and targets and _text(targets[0]) == "-":
        return
    if not targets:
        return
    target = _word(targets[0], why)
    if target is None:
        why("a write redirection to a path bash computes at run time")
    elif protected_target(target):
        why(f"a write redirection into a protected path ({target})")


def protected_target(path: str) -> bool:
    """True when a script writing to `path` must not be taken as simple: a hidden file or directory on the
    way (`.git/hooks`, `.ssh`, `.bashrc`, `.config`: where code that runs later lives), a path that climbs
    (`..`), the home directory (`~`), or a system directory (/etc, /usr, /boot, /proc, ...). /dev/null and
    the standard streams are never protected; the sandbox's own confinement still applies to every write."""
    if path in _HARMLESS_TARGETS:
        return False
    if path.startswith("~"):
        return True
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." or p.startswith(".") for p in parts):
        return True
    return path.startswith("/") and bool(parts) and parts[0] in _SYSTEM_DIRS


def _text(node: Any) -> str:
    raw: bytes = node.text
    return raw.decode("utf-8", "surrogateescape")


def _word(node: Any, why: Any) -> str | None:
    """The value bash gives a word node, or None when only bash at run time knows it."""
    kind = node.type
    if kind == "word":
        text = _text(node)
        if not _plain(text):
            why("a word the grammar and bash may read differently")
            return None
        if text.startswith("~") or _expands(text):
            return None
        return _unescape(text)
    if kind == "number":
        return _text(node)
    if kind == "raw_string":
        text = _text(node)
        return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == "'" else None
    if kind == "string":
        for child in node.children:
            if child.type not in ('"', "string_content"):
                if child.type in ("command_substitution", "process_substitution"):
                    why(_OPAQUE_WHY[child.type])
                return None
        text = _text(node)
        if len(text) < 2 or text[0] != '"' or text[-1] != '"':
            return None
        # From the text itself: the grammar leaves blanks inside quotes out of its content nodes.
        return _unescape_double(text[1:-1])
    if kind == "concatenation":
        # A glob or brace expansion may span the pieces (`={,}`, `"a"*`): look at the unquoted text, each
        # quoted piece standing as one plain character.
        shape = "".join(_text(c) if c.type == "word" else "x" for c in node.children)
        if shape.startswith("~") or _expands(shape):
            return None
        pieces = [_word(child, why) for child in node.children]
        if any(p is None for p in pieces):
            return None
        return "".join(p for p in pieces if p is not None)
    if kind == "ansi_c_string":
        text = _text(node)
        if "\\" in text or len(text) < 3:
            return None  # its escapes are bash's own dialect: not decoded here
        return text[2:-1]
    if kind in ("command_substitution", "process_substitution"):
        why(_OPAQUE_WHY[kind])
    return None


#: Characters bash never leaves unescaped inside one bare word.
_METACHARACTERS = frozenset(" \t\n;&|<>()'\"`$")


def _plain(text: str) -> bool:
    """True when a bare word's text has no unescaped shell metacharacter: where the grammar made one word of
    what bash would split or quote (`} {`), the word cannot be vouched for."""
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in _METACHARACTERS:
            return False
    return not escaped


def _expands(text: str) -> bool:
    """True when bash may expand this bare word into something else: a glob (`*`, `?`, `[...]`) or a brace
    expansion (`{a,b}`, `{1..3}`). Conservative: a lone `[` (the test command) or `{` stays literal."""
    if "*" in text or "?" in text:
        return True
    if "[" in text and "]" in text[text.index("[") + 1 :]:
        return True
    return "{" in text and "}" in text[text.index("{") + 1 :]


def _unescape(text: str) -> str:
    """A bare word's backslashes as bash removes them (a backslash-newline joins lines)."""
    if "\\" not in text:
        return text
    out: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            if nxt != "\n":
                out.append(nxt)
        else:
            out.append(ch)
    return "".join(out)


def _unescape_double(text: str) -> str:
    """Backslashes inside double quotes: only before $ ` " \\ and newline are they removed."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in '$`"\\\n':
            if text[i + 1] != "\n":
                out.append(text[i + 1])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)
