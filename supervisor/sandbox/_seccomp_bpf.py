"""The one seccomp compiler: the built-in rules and a policy's seccomp profile in ONE classic-BPF program.

Both come in the same terms (policies.SeccompProfile: a default action and rules {names, action, args}),
turned into `Rule`s per syscall number by supervisor/sandbox/seccomp.py, and compiled here into one program
whose verdict for every call is the one the two would give as two stacked filters, the profile's installed
last (the kernel's rule for stacked filters): the stricter verdict of the two (kill > errno > log > allow),
and between two of the same kind the profile's. Within one side, the strictest matching rule wins, and
between rules of the same kind the first listed; no matching rule gives the side's default (the built-in
side's is allow).

`assemble` writes that program twice from the same rules: the **decision** program with the real actions,
and the **installed** program, identical but for the `ret` of every rule marked `report`, which answers
SECCOMP_RET_USER_NOTIF instead. The sandbox init installs the second with a listener and, for each
notification, runs the first on the kernel-supplied seccomp_data (a classic-BPF interpreter in _cinit.c)
to learn the action to take. Both are written by the same code from the same rules, differing only in the
returned values, so they agree by construction; `verdict` is the reference semantics the self-check and
the tests compare both programs with.

The kernel converts and JIT-compiles the program at every sandbox's seccomp(2), at a cost that grows with
its length, so it is written short without changing a decision: same-outcome rules on one argument are
tested as groups (`_group`), and the number search runs over ranges of numbers with one verdict.

Only the standard library: imported by the fork server too (``python -I -S``).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

ALLOW = 0x7FFF0000
LOG = 0x7FFC0000
NOTIFY = 0x7FC00000  # SECCOMP_RET_USER_NOTIF
ERRNO = 0x00050000
KILL_PROCESS = 0x80000000

# libseccomp's operator numbers (the model's spelling is in seccomp._PROFILE_OPS).
NE, LT, LE, EQ, GE, GT, MASKED_EQ = 1, 2, 3, 4, 5, 6, 7

#: (argument index, operator, a, b): `a` is the compared value, or for MASKED_EQ the mask and `b` the datum.
Cmp = tuple[int, int, int, int]

_X32_SYSCALL_BIT = 0x40000000
_MAXINSNS = 4096
_M32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule on one syscall: `action` (a SECCOMP_RET_* value with its data) when every comparison holds.
    `report`: the installed program notifies the init instead. `origin`/`index` say which rule it is
    ("builtin" or "profile", its index in that profile's rules; -1 for a default)."""

    action: int
    cmps: tuple[Cmp, ...] = ()
    report: bool = False
    origin: str = "builtin"
    index: int = -1


#: The built-in side's default.
ALLOW_RULE = Rule(ALLOW)


def precedence(rule: Rule) -> int:
    """How strict a verdict is: kill 5, errno 4, log 2, an allow that is watched (reported) 1, allow 0."""
    a = rule.action
    if a == KILL_PROCESS:
        return 5
    if a & 0xFFFF0000 == ERRNO:
        return 4
    if a == LOG:
        return 2
    return 1 if rule.report else 0


@dataclass(slots=True)
class Spec:
    """What to compile: per syscall number the built-in rules and the profile's rules, the profile's default
    (ALLOW_RULE without a profile), the numbers the profile does not apply to (`exempt`: always allowed by
    it), this machine's audit arch, and whether x32 syscall numbers must be killed (x86_64)."""

    builtin: dict[int, list[Rule]]
    profile: dict[int, list[Rule]]
    default: Rule
    audit_arch: int
    x32_guard: bool
    exempt: frozenset[int] = field(default_factory=frozenset)


def order(rules: Iterable[Rule]) -> list[Rule]:
    """Strictest first; at equal strictness the profile's before the built-in ones, then in listed order."""
    ranked = sorted(enumerate(rules), key=lambda ir: (-precedence(ir[1]), ir[1].origin != "profile", ir[0]))
    return [r for _, r in ranked]


def _holds(cmp: Cmp, args: tuple[int, ...]) -> bool:
    arg, op, a, b = cmp
    v = args[arg] if arg < len(args) else 0
    if op == MASKED_EQ:
        return v & a == b
    return {NE: v != a, LT: v < a, LE: v <= a, EQ: v == a, GE: v >= a, GT: v > a}[op]


def side(rules: list[Rule], default: Rule, args: tuple[int, ...]) -> Rule:
    for r in order(rules):
        if all(_holds(c, args) for c in r.cmps):
            return r
    return default


def verdict(spec: Spec, nr: int, args: tuple[int, ...] = (), arch: int | None = None) -> Rule:
    """The rule that decides a call (the reference semantics, in Python): a foreign arch or an x32 number is
    killed; else the stricter of the built-in side's and the profile side's verdicts, the profile's on a
    tie. Arguments are 64-bit."""
    args = tuple(a & (2**64 - 1) for a in args) + (0,) * (6 - len(args))
    if arch is not None and arch != spec.audit_arch:
        return Rule(KILL_PROCESS)
    if spec.x32_guard and nr & _M32 >= _X32_SYSCALL_BIT and nr & _M32 != _M32:
        return Rule(KILL_PROCESS)
    b = side(spec.builtin.get(nr, []), ALLOW_RULE, args)
    p = ALLOW_RULE if nr in spec.exempt else side(spec.profile.get(nr, []), spec.default, args)
    return b if precedence(b) > precedence(p) else p


# ---- the assembler: instructions with symbolic jump targets, resolved at the end ----

_LD_ABS, _AND_K, _JA, _JEQ, _JGT, _JGE, _RET = 0x20, 0x54, 0x05, 0x15, 0x25, 0x35, 0x06


class _Asm:
    def __init__(self) -> None:
        self.code: list[tuple[int, int | str, int | str, int | str]] = []
        self.labels: dict[str, int] = {}
        self._n = 0

    def label(self, prefix: str = "L") -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def put(self, code: int, k: int | str = 0, jt: int | str = 0, jf: int | str = 0) -> None:
        self.code.append((code, jt, jf, k))

    def at(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def bytes(self) -> bytes:
        out = bytearray()
        for i, (code, jt, jf, k) in enumerate(self.code):

            def rel(t: int | str, i: int = i) -> int:
                return t if isinstance(t, int) else self.labels[t] - (i + 1)

            if code == _JA:
                kk = rel(k)
                jt_, jf_ = 0, 0
            else:
                kk = k if isinstance(k, int) else self.labels[k]
                jt_, jf_ = rel(jt), rel(jf)
                if not (0 <= jt_ <= 255 and 0 <= jf_ <= 255):
                    msg = f"seccomp compiler: conditional jump out of range at {i}"
                    raise ValueError(msg)
            out += struct.pack("=HBBI", code, jt_, jf_, kk & _M32)
        return bytes(out)


def _cond(asm: _Asm, cmp: Cmp, fail: str) -> None:
    """Code that falls through when `cmp` holds and jumps to `fail` when not (64-bit, little-endian)."""
    arg, op, a, b = cmp
    lo_off = 16 + 8 * arg
    hi_off = lo_off + 4
    ok = asm.label("ok")
    ah, al = a >> 32 & _M32, a & _M32
    if op == MASKED_EQ:
        bh, bl = b >> 32 & _M32, b & _M32
        if ah or bh:
            asm.put(_LD_ABS, hi_off)
            if ah != _M32:
                asm.put(_AND_K, ah)
            asm.put(_JEQ, bh, 0, fail)
        asm.put(_LD_ABS, lo_off)
        if al != _M32:
            asm.put(_AND_K, al)
        asm.put(_JEQ, bl, 0, fail)
        return
    asm.put(_LD_ABS, hi_off)
    if op == EQ:
        asm.put(_JEQ, ah, 0, fail)
        asm.put(_LD_ABS, lo_off)
        asm.put(_JEQ, al, 0, fail)
    elif op == NE:
        asm.put(_JEQ, ah, 0, ok)
        asm.put(_LD_ABS, lo_off)
        asm.put(_JEQ, al, fail, 0)
    elif op in (GT, GE):
        asm.put(_JGT, ah, ok, 0)
        asm.put(_JEQ, ah, 0, fail)
        asm.put(_LD_ABS, lo_off)
        asm.put(_JGT if op == GT else _JGE, al, 0, fail)
    elif op in (LT, LE):
        asm.put(_JGT, ah, fail, 0)
        asm.put(_JEQ, ah, 0, ok)
        asm.put(_LD_ABS, lo_off)
        asm.put(_JGT if op == LE else _JGE, al, fail, 0)
    else:
        msg = f"seccomp compiler: unknown operator {op}"
        raise ValueError(msg)
    asm.at(ok)


def _ret(rule: Rule, notify: bool) -> int:
    return NOTIFY if notify and rule.report else rule.action


def _rules_then(asm: _Asm, rules: list[Rule], then: Mapping[int, str] | None, notify: bool) -> bool:
    """For each rule in order: if it matches, return its verdict (or jump to `then[id]`). Returns True when
    an unconditional rule ended the list (what follows is unreachable).

    Consecutive rules with the same outcome (the same verdict, or the same `then` label) that each compare
    one argument, the same one, by == or masked == on its low word alone, are tested as one group
    (`_group`): the first match wins, and among rules of the same outcome which one matches changes nothing.
    """
    i = 0
    while i < len(rules):
        r = rules[i]
        target = _target(r, then, notify)
        j = i
        while (
            j < len(rules)
            and j - i < _GROUP_MAX
            and _groupable(rules[j], r.cmps[0][0] if r.cmps else -1)
            and _target(rules[j], then, notify) == target
        ):
            j += 1
        if j - i >= 2:
            _group(asm, [c for g in rules[i:j] for c in g.cmps], target, then is not None)
            i = j
            continue
        fail = asm.label("f")
        for c in r.cmps:
            _cond(asm, c, fail)
        if then is None:
            asm.put(_RET, _ret(r, notify))
        else:
            asm.put(_JA, then[id(r)])
        asm.at(fail)
        if not r.cmps:
            return True
        i += 1
    return False


#: At most this many rules per group: every jump of a group to its outcome stays within the 255
#: instructions a conditional jump reaches (a rule costs at most 4 instructions there).
_GROUP_MAX = 48
_JSET = 0x45


def _target(rule: Rule, then: Mapping[int, str] | None, notify: bool) -> int | str:
    return _ret(rule, notify) if then is None else then[id(rule)]


def _groupable(rule: Rule, arg: int) -> bool:
    """Whether `rule` can join a group testing argument `arg`: one comparison, on `arg`, by == (any value)
    or by masked == on the low word only (mask and datum both below 2**32)."""
    if len(rule.cmps) != 1:
        return False
    a, op, m, b = rule.cmps[0]
    return a == arg and (op == EQ or (op == MASKED_EQ and m >> 32 == 0 and b >> 32 == 0 and m != 0))


def _group(asm: _Asm, cmps: list[Cmp], target: int | str, jump: bool) -> None:
    """Code that goes to `target` (a verdict to return, or with `jump` a label to jump to) when any of
    `cmps` holds (all on one argument, each == or low-word masked ==: `_groupable`), and falls through
    when none does. Single-bit masks whose datum is the bit are one JSET on their union; other masked ==
    share one AND per mask; == shares one load and test of the high word per high word."""
    arg = cmps[0][0]
    lo_off = 16 + 8 * arg
    hi_off = lo_off + 4
    hit = asm.label("hit")
    bits = 0
    masks: dict[int, list[int]] = {}
    highs: dict[int, list[int]] = {}
    for _arg, op, m, b in cmps:
        if op == MASKED_EQ and m == b and m & (m - 1) == 0:
            bits |= m  # v & bit == bit: the bit is set
        elif op == MASKED_EQ:
            masks.setdefault(m, []).append(b)
        else:
            highs.setdefault(m >> 32 & _M32, []).append(m & _M32)
    if bits:
        asm.put(_LD_ABS, lo_off)
        asm.put(_JSET, bits, hit, 0)
    for m, data in masks.items():
        asm.put(_LD_ABS, lo_off)
        if m != _M32:
            asm.put(_AND_K, m)
        for b in dict.fromkeys(data):
            asm.put(_JEQ, b, hit, 0)
    for h, lows in highs.items():
        skip = asm.label("s")
        asm.put(_LD_ABS, hi_off)
        asm.put(_JEQ, h, 0, skip)
        asm.put(_LD_ABS, lo_off)
        for low in dict.fromkeys(lows):
            asm.put(_JEQ, low, hit, 0)
        asm.at(skip)
    done = asm.label("d")
    asm.put(_JA, done)
    asm.at(hit)
    if jump:
        assert isinstance(target, str)
        asm.put(_JA, target)
    else:
        assert isinstance(target, int)
        asm.put(_RET, target)
    asm.at(done)


def _block(asm: _Asm, spec: Spec, nr: int, notify: bool) -> None:
    """The code deciding syscall `nr` (see `verdict` for what it computes and the module doc for why)."""
    exempt = nr in spec.exempt
    p_rules = [] if exempt else spec.profile.get(nr, [])
    dflt = ALLOW_RULE if exempt else spec.default
    ordered = order([*p_rules, *spec.builtin.get(nr, [])])
    high = [r for r in ordered if precedence(r) > precedence(dflt)]
    low = [r for r in ordered if precedence(r) <= precedence(dflt)]
    if _rules_then(asm, high, None, notify):
        return
    p_low = [r for r in p_rules if precedence(r) <= precedence(dflt)]
    if not p_low or all(_ret(r, notify) == _ret(dflt, notify) for r in low):
        asm.put(_RET, _ret(dflt, notify))
        return
    if not any(not r.cmps for r in p_low):
        # The profile side gives its default unless one of its rules matches.
        matched = asm.label("pm")
        _rules_then(asm, p_low, {id(r): matched for r in p_low}, notify)
        asm.put(_RET, _ret(dflt, notify))
        asm.at(matched)
    if not _rules_then(asm, low, None, notify):
        asm.put(_RET, _ret(dflt, notify))  # not reached: a profile rule matched, and it is in `low`


def _single_ret(spec: Spec, nr: int, notify: bool) -> int | None:
    """The verdict of `nr` when it does not depend on the arguments (an inline `ret`), else None."""
    asm = _Asm()
    _block(asm, spec, nr, notify)
    if len(asm.code) == 1 and asm.code[0][0] == _RET:
        k = asm.code[0][3]
        assert isinstance(k, int)
        return k
    return None


def assemble(spec: Spec, notify: bool) -> bytes:
    """The program for `spec`: with `notify`, the installed one (reported rules answer USER_NOTIF), else
    the decision one. Raises ValueError when it would not fit the kernel's 4096 instructions (or a jump
    would not fit its 8 bits: a compiler bug)."""
    if sys.byteorder != "little":  # the argument words' order below
        msg = "seccomp compiler: big-endian machines are not supported"
        raise ValueError(msg)
    asm = _Asm()
    asm.put(_LD_ABS, 4)  # arch
    asm.put(_JEQ, spec.audit_arch, 1, 0)
    asm.put(_RET, KILL_PROCESS)
    asm.put(_LD_ABS, 0)  # nr
    if spec.x32_guard:
        # x32 numbers arrive with the x86_64 audit arch; -1 (a tracer's skipped call) goes on, as libseccomp.
        asm.put(_JGE, _X32_SYSCALL_BIT, 0, 2)
        asm.put(_JEQ, _M32, 1, 0)
        asm.put(_RET, KILL_PROCESS)
    nrs = sorted(set(spec.builtin) | set(spec.profile) | set(spec.exempt))
    dflt = _ret(spec.default, notify)
    inline = {nr: _single_ret(spec, nr, notify) for nr in nrs}
    nrs = [nr for nr in nrs if inline[nr] != dflt]  # the same as the default: no entry needed
    blocks: dict[int, str] = {nr: asm.label("b") for nr in nrs if inline[nr] is None}
    # The dispatch on the number: a binary search over runs of consecutive numbers with the same inline
    # verdict (one number each where its code is a block of its own), anything else the default.
    runs: list[tuple[int, int, int | None]] = []
    for nr in nrs:
        k = inline[nr]
        if runs and k is not None and runs[-1][1] == nr - 1 and runs[-1][2] == k:
            runs[-1] = (runs[-1][0], nr, k)
        else:
            runs.append((nr, nr, k))

    def leaf_size(lo: int, hi: int) -> int:
        return sum(2 if first == last else 3 for first, last, _k in runs[lo:hi]) + 1

    sizes: dict[tuple[int, int], int] = {}

    def size(lo: int, hi: int) -> int:
        if (lo, hi) not in sizes:
            if hi - lo <= 4:
                sizes[lo, hi] = leaf_size(lo, hi)
            else:
                mid = (lo + hi) // 2
                left = size(lo, mid)
                sizes[lo, hi] = (1 if left <= 255 else 2) + left + size(mid, hi)
        return sizes[lo, hi]

    def tree(lo: int, hi: int) -> None:
        if hi - lo <= 4:
            for first, last, k in runs[lo:hi]:
                if first == last:
                    asm.put(_JEQ, first, 0, 1)
                else:
                    asm.put(_JGE, first, 0, 2)
                    asm.put(_JGT, last, 1, 0)
                if k is None:
                    asm.put(_JA, blocks[first])
                else:
                    asm.put(_RET, k)
            asm.put(_RET, dflt)
            return
        mid = (lo + hi) // 2
        right = asm.label("r")
        if size(lo, mid) <= 255:  # the right half is within a conditional jump's reach
            asm.put(_JGE, runs[mid][0], right, 0)
        else:
            asm.put(_JGE, runs[mid][0], 0, 1)
            asm.put(_JA, right)
        tree(lo, mid)
        asm.at(right)
        tree(mid, hi)

    tree(0, len(runs))
    for nr, label in blocks.items():
        asm.at(label)
        _block(asm, spec, nr, notify)
    if len(asm.code) > _MAXINSNS:
        msg = f"the filter has {len(asm.code)} instructions (the kernel takes {_MAXINSNS})"
        raise ValueError(msg)
    return asm.bytes()


def witnesses(rule: Rule) -> list[tuple[int, ...]]:
    """Argument tuples on which `rule`'s comparisons hold (one per rule, each comparison on its own
    argument), and the same with each comparison's boundary moved, for the self-check and the tests."""
    args = [0] * 6
    near = []
    for arg, op, a, b in rule.cmps:
        args[arg] = {EQ: a, NE: a ^ 1, GT: a + 1, GE: a, LT: a - 1, LE: a, MASKED_EQ: b}[op] & (2**64 - 1)
    near.append(tuple(args))
    for arg, _op, a, b in rule.cmps:
        for v in (a, a + 1, a - 1, a | 1 << 32, b | (~a & 0xFF)):
            moved = list(args)
            moved[arg] = v & (2**64 - 1)
            near.append(tuple(moved))
    return near
