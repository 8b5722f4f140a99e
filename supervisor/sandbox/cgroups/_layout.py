"""Where each cgroup controller lives: parsing /proc/self/mountinfo and /proc/self/cgroup.

Pure parsing plus a few reads of `cgroup.controllers`; no writes. Both roots are injectable so that
the parsers run on fake fixture trees in unit tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

#: The controllers corral uses. `cpuacct` (usage accounting) and `freezer` (whole-group kill) are
#: separate hierarchies on cgroup v1; on v2 they are core files of every cgroup (cpu.stat;
#: cgroup.kill, cgroup.freeze).
CONTROLLERS: tuple[str, ...] = ("memory", "cpu", "cpuacct", "pids", "freezer")

#: v2 controllers that must be enabled in a parent's cgroup.subtree_control before a child cgroup
#: has them.
V2_DOMAIN_CONTROLLERS: tuple[str, ...] = ("memory", "cpu", "pids")

#: v2 features every cgroup has without enabling anything (kernel >= 5.14 for cgroup.kill).
V2_CORE: tuple[str, ...] = ("cpuacct", "freezer")

#: Where cgroup filesystems are mounted on the host; mount points under it are rebased onto
#: `cgroup_root`.
HOST_CGROUP_ROOT = "/sys/fs/cgroup"

Mode = Literal["v1", "v2", "hybrid", "none"]


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """One mounted cgroup hierarchy as seen by this process.

    version:     1 or 2.
    mount_point: the directory the hierarchy is mounted on (rebased onto `cgroup_root`).
    mount_root:  the mount's root inside the hierarchy (mountinfo field 4; "/" unless a sub-cgroup
                 was bind-mounted, as container runtimes do).
    cgroup:      this process's cgroup in the hierarchy (from /proc/self/cgroup).
    controllers: v1: the controllers bound to the hierarchy; v2: those listed in this process's
                 cgroup.controllers (what its parent delegates, so what it may enable for its own
                 children).
    """

    version: int
    mount_point: str
    mount_root: str
    cgroup: str
    controllers: frozenset[str]

    def dir_of(self, cgroup: str) -> str:
        """The directory of `cgroup` (a path inside the hierarchy). Raises ValueError when that
        cgroup is not visible through this mount (outside its root)."""
        root = self.mount_root.rstrip("/")
        if root and cgroup != root and not cgroup.startswith(root + "/"):
            msg = f"cgroup {cgroup} is outside the mount's root {self.mount_root}"
            raise ValueError(msg)
        rel = cgroup[len(root) :].strip("/")
        return os.path.join(self.mount_point, rel) if rel else self.mount_point

    @property
    def path(self) -> str:
        """The directory of this process's own cgroup in the hierarchy."""
        return self.dir_of(self.cgroup)


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    """Which hierarchy serves each controller.

    controllers: controller name -> the hierarchy that serves it, for each usable one of
                 `CONTROLLERS`.
    missing:     controller name -> why it is unusable (not mounted, not delegated, cgroup not
                 visible).
    unified:     the cgroup2 mount, if any (on hybrid hosts it often has no controllers at all).
    v1:          every cgroup v1 hierarchy that carries one of `CONTROLLERS`.
    """

    controllers: dict[str, Hierarchy] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    unified: Hierarchy | None = None
    v1: tuple[Hierarchy, ...] = ()

    def version(self, controller: str) -> int | None:
        """1 or 2 for a usable controller, None for a missing one."""
        h = self.controllers.get(controller)
        return h.version if h else None

    @property
    def mode(self) -> Mode:
        """`v2` when every usable controller is on cgroup2, `v1` when all are on v1, `hybrid` for a
        mix (or v1 controllers beside a cgroup2 mount), `none` when no controller is usable."""
        versions = {h.version for h in self.controllers.values()}
        if not versions:
            return "none"
        if versions == {2}:
            return "v2"
        if versions == {1} and self.unified is None:
            return "v1"
        return "hybrid"

    def hierarchies(self) -> list[Hierarchy]:
        """The distinct hierarchies serving usable controllers, in `CONTROLLERS` order (cpu and
        cpuacct co-mounted give one entry)."""
        seen: list[Hierarchy] = []
        for name in CONTROLLERS:
            h = self.controllers.get(name)
            if h is not None and h not in seen:
                seen.append(h)
        return seen


@dataclass(frozen=True, slots=True)
class MountEntry:
    """A cgroup or cgroup2 line of mountinfo. `options` are the super options (v1: the
    controllers)."""

    mount_point: str
    root: str
    fstype: str
    options: frozenset[str]


def _unescape(field_: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in field_:
        return field_
    out, i = [], 0
    while i < len(field_):
        if field_[i] == "\\" and i + 4 <= len(field_) and field_[i + 1 : i + 4].isdigit():
            out.append(chr(int(field_[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The cgroup and cgroup2 mounts in a /proc/<pid>/mountinfo text, in order. Malformed lines are
    skipped."""
    mounts: list[MountEntry] = []
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        if len(fields) < 5 or len(fields) < sep + 3:
            continue
        fstype = fields[sep + 1]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        options = frozenset(fields[sep + 3].split(","))
        mounts.append(MountEntry(_unescape(fields[4]), _unescape(fields[3]), fstype, options))
    return mounts


def parse_proc_cgroup(text: str) -> tuple[dict[frozenset[str], str], str | None]:
    """Parse /proc/<pid>/cgroup. Returns ({v1 controller set: cgroup path}, the v2 path or None).

    Named v1 hierarchies appear with their `name=...` token in the set.
    """
    v1: dict[frozenset[str], str] = {}
    v2: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier_id, ctrls, path = parts
        if hier_id == "0" and ctrls == "":
            v2 = path
        elif ctrls:
            v1[frozenset(ctrls.split(","))] = path
    return v1, v2


def _rebase(mount_point: str, cgroup_root: str) -> str:
    root = cgroup_root.rstrip("/") or "/"
    if root == HOST_CGROUP_ROOT:
        return mount_point
    if mount_point == HOST_CGROUP_ROOT:
        return root
    if mount_point.startswith(HOST_CGROUP_ROOT + "/"):
        return root + mount_point[len(HOST_CGROUP_ROOT) :]
    return mount_point


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _pick(candidates: list[MountEntry], cgroup: str, cgroup_root: str) -> MountEntry | None:
    """Of several mounts of one hierarchy (bind mounts), the one through which `cgroup` is visible,
    preferring mounts under `cgroup_root`."""
    visible = []
    for m in candidates:
        root = m.root.rstrip("/")
        if not root or cgroup == root or cgroup.startswith(root + "/"):
            visible.append(m)
    if not visible:
        return None
    rebased_root = cgroup_root.rstrip("/")
    visible.sort(key=lambda m: not _rebase(m.mount_point, cgroup_root).startswith(rebased_root))
    return visible[0]


def discover(proc_root: str = "/proc", cgroup_root: str = HOST_CGROUP_ROOT) -> CgroupLayout:
    """Find, for each controller corral uses, whether it is on cgroup v1 or v2, where, and this
    process's cgroup in that hierarchy.

    Reads `<proc_root>/self/mountinfo`, `<proc_root>/self/cgroup` and, for cgroup2, the own cgroup's
    `cgroup.controllers`. Mount points under /sys/fs/cgroup are rebased onto `cgroup_root`; both
    roots are injectable so that unit tests run the parsers on fake fixture trees. A controller
    bound to a v1 hierarchy is v1 (the kernel allows each controller in one hierarchy only);
    otherwise memory, cpu and pids are v2 when the own cgroup's cgroup.controllers lists them, and
    cpuacct and freezer are v2 core features whenever a cgroup2 mount holds this process. Raises
    OSError when the two /proc files cannot be read. Sync; no cancellation points.
    """
    mounts = parse_mountinfo(_read(os.path.join(proc_root, "self", "mountinfo")))
    v1_paths, v2_path = parse_proc_cgroup(_read(os.path.join(proc_root, "self", "cgroup")))
    controllers: dict[str, Hierarchy] = {}
    missing: dict[str, str] = {}
    v1_hiers, v1_bound = _v1_hierarchies(mounts, v1_paths, cgroup_root, controllers, missing)
    unified: Hierarchy | None = None
    if v2_path is not None:
        unified = _unified(mounts, v2_path, cgroup_root, v1_bound, missing)
    for c in CONTROLLERS:
        if c in controllers or c in v1_bound:
            continue
        if unified is None:
            missing.setdefault(c, "neither a cgroup v1 hierarchy nor cgroup2 provides it")
        elif c in V2_CORE or c in unified.controllers:
            controllers[c] = unified
            missing.pop(c, None)
        else:
            missing[c] = (
                f"cgroup2 controller {c} is not available in {unified.path} (not in its "
                "cgroup.controllers: the parent cgroup does not enable it in its "
                "cgroup.subtree_control)"
            )
    return CgroupLayout(controllers, missing, unified, tuple(v1_hiers))


def _v1_hierarchies(
    mounts: list[MountEntry],
    v1_paths: dict[frozenset[str], str],
    cgroup_root: str,
    controllers: dict[str, Hierarchy],
    missing: dict[str, str],
) -> tuple[list[Hierarchy], set[str]]:
    """The v1 hierarchies serving corral's controllers (each put in `controllers`, or in `missing` with
    why when its hierarchy is not visible), and every controller bound to a v1 hierarchy."""
    v1_hiers: list[Hierarchy] = []
    v1_bound: set[str] = set()
    for ctrl_set, path in v1_paths.items():
        wanted = ctrl_set & set(CONTROLLERS)
        if not wanted:
            continue
        v1_bound |= wanted
        cands = [m for m in mounts if m.fstype == "cgroup" and wanted <= m.options]
        m = _pick(cands, path, cgroup_root)
        if m is None:
            why = (
                f"cgroup v1 hierarchy {','.join(sorted(ctrl_set))} is not mounted"
                if not cands
                else f"own cgroup {path} is not visible under any mount of the "
                f"{','.join(sorted(ctrl_set))} hierarchy"
            )
            for c in wanted:
                missing[c] = why
            continue
        h = Hierarchy(1, _rebase(m.mount_point, cgroup_root), m.root, path, frozenset(wanted))
        v1_hiers.append(h)
        for c in wanted:
            controllers[c] = h
    return v1_hiers, v1_bound


def _unified(
    mounts: list[MountEntry], v2_path: str, cgroup_root: str, v1_bound: set[str], missing: dict[str, str]
) -> Hierarchy | None:
    """The cgroup2 hierarchy holding this process, with the controllers its cgroup.controllers lists; None
    (and why, in `missing`, for every controller no v1 hierarchy serves) when it is not visible."""
    cands = [m for m in mounts if m.fstype == "cgroup2"]
    m = _pick(cands, v2_path, cgroup_root)
    if m is None:
        why2 = (
            "no cgroup2 filesystem is mounted"
            if not cands
            else f"own cgroup2 path {v2_path} is not visible under the cgroup2 mount"
        )
        for c in CONTROLLERS:
            if c not in v1_bound and c not in missing:
                missing[c] = why2
        return None
    probe = Hierarchy(2, _rebase(m.mount_point, cgroup_root), m.root, v2_path, frozenset())
    try:
        avail = frozenset(_read(os.path.join(probe.path, "cgroup.controllers")).split())
    except OSError:
        avail = frozenset()
    return Hierarchy(2, probe.mount_point, probe.mount_root, v2_path, avail)
