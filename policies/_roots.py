"""Writable roots whose meaning is the host itself: refused unless the policy says so by name.

`--workdir /` or `--allow-write /etc` are accepted as paths, but what they mean is "the sandbox may change
the host's programs and configuration" (as uid 0 under a root caller). `check_writable_roots` refuses
them unless ``filesystem.allow_system_write`` is set, and returns warnings for roots that are legitimate
but risky (the caller's home directory: shell start-up files, ssh and git configuration).
"""

from __future__ import annotations

import contextlib
import os
import pwd

from policies._errors import PolicyError
from policies._model import Policy

#: Refused as writable roots, and anything beneath them: the host's programs, libraries, configuration,
#: boot files, devices and kernel interfaces, and the spool directories whose contents the system runs
#: (cron, at).
SYSTEM_TREES: tuple[str, ...] = (
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/boot",
    "/dev",
    "/proc",
    "/sys",
    "/efi",
    "/var/spool",
    # Runtime state of the system and its services (systemd's runtime units and generators, udev rules,
    # sudo's timestamps, the shared /run/lock): a root caller's sandbox planting a unit file in
    # /run/systemd/system had it run as root at the next daemon-reload. /var/run and /var/lock lead here.
    "/run",
    # What package managers, the service manager, polkit, sudo and container runtimes keep and act on as
    # root: dpkg runs /var/lib/dpkg/info/*.postinst, apt installs from /var/cache/apt/archives what the
    # lists in /var/lib/apt say, polkit grants from /var/lib/polkit-1, docker runs its images' layers.
    "/var/lib/dpkg",
    "/var/lib/apt",
    "/var/lib/rpm",
    "/var/lib/dnf",
    "/var/lib/yum",
    "/var/lib/pacman",
    "/var/lib/snapd",
    "/var/lib/flatpak",
    "/var/lib/systemd",
    "/var/lib/polkit-1",
    "/var/lib/sudo",
    "/var/lib/dbus",
    "/var/lib/ucf",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/containers",
    "/var/lib/libvirt",
    "/var/lib/lxc",
    "/var/lib/lxd",
    "/var/lib/machines",
    "/var/lib/kubelet",
    "/var/cache/apt",
    "/var/cache/debconf",
    "/var/cache/dnf",
    "/var/cache/yum",
    "/var/cache/pacman",
    "/var/cache/ldconfig",
    # root's backups of the account databases, every user's mailbox, the system's own data of /opt
    # packages, and the package stores every user runs programs from.
    "/var/backups",
    "/var/mail",
    "/var/local",
    "/var/opt",
    "/nix",
    "/gnu",
    "/snap",
)

#: Their subdirectories are services' state: one that root owns (`/var/lib/<service>`, `/var/cache/<tool>`,
#: `/var/log/<service>`) is the system's, refused like the trees above (a service's state of an account of
#: its own, /var/lib/jenkins, and anything below it, is an ordinary place for work). The lists above name the
#: known ones whatever their owner; this catches the rest.
STATE_DIRS: tuple[str, ...] = ("/var/lib", "/var/cache", "/var/log")

#: Refused as writable roots themselves (their subdirectories are ordinary places for work: a CI home
#: under /var/lib, a project under /srv or /home/user): the root directory and the directories that
#: hold every user's or service's data.
SYSTEM_DIRS: tuple[str, ...] = (
    "/",
    "/home",
    "/var",
    "/var/lib",
    "/var/cache",
    "/var/log",
    "/opt",
    "/srv",
    "/mnt",
    "/media",
    # Every user's and service's temporary files (systemd's private /tmp of each service is a root-owned
    # directory there): as a root caller's writable root, root-owned entries of other programs are the
    # sandbox's own to replace. A directory of one's own below them is an ordinary workdir.
    "/tmp",
    "/var/tmp",
)

_HINT = (
    "a sandbox could change the host's programs or configuration (as root under a root caller); "
    "if you mean it, pass --allow-system-write (policy: filesystem.allow_system_write = true)"
)


def system_root(path: str) -> str | None:
    """The system directory `path` (absolute, normalised) is or lies in, else None. Symlinks are
    resolved too (``/lib`` -> ``/usr/lib``, a link in a home directory to ``/etc``). A root-owned directory
    right below one of STATE_DIRS counts as a system directory (one stat of it, following links)."""
    candidates = [path]
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        real = path
    if real != path:
        candidates.append(real)
    for p in candidates:
        if p in SYSTEM_DIRS:
            return p
        for tree in SYSTEM_TREES:
            if p == tree or p.startswith(tree + "/"):
                return tree
    for p in candidates:
        for parent in STATE_DIRS:
            if p.startswith(parent + "/"):
                top = parent + "/" + p[len(parent) + 1 :].split("/", 1)[0]
                try:
                    owner = os.stat(top).st_uid
                except (OSError, ValueError):
                    continue  # missing: no root to refuse (a missing writable root fails on its own)
                if owner == 0:
                    return top
    return None


def check_writable_roots(policy: Policy) -> list[str]:
    """Refuse a confined policy whose writable roots include a system directory (see SYSTEM_TREES and
    SYSTEM_DIRS) unless ``filesystem.allow_system_write`` is set; return warnings (the caller's home
    directory, or a directory holding it, as a writable root; the home as $HOME and as the password
    database name it; its start-up files and `.config`/`.local`, STARTUP_ENTRIES) for the caller to log.

    Raises PolicyError naming ``workdir`` when the offending root is the workdir, else
    ``filesystem.write[i]``. An unconfined policy (full-access) is not checked: it writes everything by
    its own explicit choice.
    """
    fs = policy.filesystem
    if not fs.confine:
        return []
    warnings: list[str] = []
    homes = _home_directories()
    for i, root in enumerate(fs.write):
        where = "workdir" if root == policy.workdir else f"filesystem.write[{i}]"
        system = system_root(root)
        if system == "/tmp" and root in ("/tmp", os.path.realpath("/tmp")):
            # Whatever the option says: the sandbox's /tmp is its own tmpfs, so this root would be an
            # empty directory the command's writes vanish from, not the host's /tmp.
            msg = (
                f"{root} is the shared temporary directory, which a confined sandbox sees as its own "
                "private, empty /tmp (not the host's); use a directory of your own below it"
            )
            raise PolicyError(where, msg, root)
        if system is not None and not fs.allow_system_write:
            what = "is a system directory" if system == root else f"lies in the system directory {system}"
            raise PolicyError(where, f"{root} {what}; {_HINT}", root)
        warned = False
        for home in homes if system is None else ():  # a system root was allowed by name: no more words
            if root == home:
                what = f"is your home directory {root}"
            elif home.startswith(root.rstrip("/") + "/"):
                what = f"{root} holds your home directory {home}"
            else:
                continue
            warnings.append(
                f"{where} {what}: the sandbox can change your shell start-up files "
                "and your ssh, git and editor configuration (credential stores stay hidden); prefer a "
                "project directory"
            )
            warned = True
            break
        for home in homes if system is None and not warned else ():
            start = _startup_entry(root, home)
            if start is not None:
                what = "is" if root == start else f"lies in {start},"
                warnings.append(
                    f"{where} {root} {what} start-up configuration in your home: the sandbox can "
                    "change what your login shell, desktop session, `systemd --user`, git or the programs "
                    "in ~/.local/bin run; prefer a project directory"
                )
                warned = True
                break
        hidden = next((d for d in fs.deny if root == d or root.startswith(d.rstrip("/") + "/")), None)
        if hidden is not None:
            # Hiding wins: the root is there for nothing, and the policy means less than it says.
            warnings.append(
                f"{where} {root} is hidden ({hidden} is denied: filesystem.deny, --deny or the credential "
                "hiding): the sandbox can neither read nor write it; drop the root, or the denial "
                "(hide_credentials = false for the default stores)"
            )
        own = _own_installation(root) if system is None else None  # a system root: allowed by name
        if own is not None:
            warnings.append(
                f"{where} {root} holds corral's own installation ({own}): a sandbox can rewrite the code "
                "that the next corral process (and a module this one loads later) runs with your rights "
                "outside any sandbox; install corral outside the directories sandboxes write"
            )
        if system is None and not warned and os.geteuid() == 0:
            # A root caller's sandbox runs as the workdir's owner: in another account's home it can change
            # that account's shell start-up files, which run at their next login.
            for home, name in _login_homes():
                if root == home or home.startswith(root.rstrip("/") + "/"):
                    what = "is" if root == home else "holds"
                    warnings.append(
                        f"{where} {root} {what} the home directory of {name} ({home}): the sandbox can "
                        f"change {name}'s shell start-up files and ssh, git and editor configuration, "
                        "which run at their next login (credential stores stay hidden); prefer a project "
                        "directory"
                    )
                    break
                # Another account's start-up files or ssh directory (`--allow-write /home/alice/.bashrc`,
                # `.ssh`, `.config`): accepted without a word, where the caller's own are warned about.
                start = _startup_entry(root, home) or _startup_entry(root, home, (".ssh",))
                if start is not None:
                    what = "is" if root == start else f"lies in {start},"
                    warnings.append(
                        f"{where} {root} {what} start-up configuration of {name}: the sandbox can change "
                        f"what {name}'s login shell, desktop session, ssh or git run at their next login; "
                        "prefer a project directory"
                    )
                    break
    return warnings


#: Entries of a home directory that the account's login shell, desktop session, `systemd --user` and git run
#: or read for what to run: as a writable root (or one below `.config`/`.local`), warned like the home.
STARTUP_ENTRIES: tuple[str, ...] = (
    ".config",
    ".local",
    ".profile",
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".bash_logout",
    ".zshrc",
    ".zshenv",
    ".zprofile",
    ".zlogin",
    ".gitconfig",
    ".pam_environment",
    ".xprofile",
    ".xsessionrc",
    ".xinitrc",
)


def _startup_entry(root: str, home: str, entries: tuple[str, ...] = STARTUP_ENTRIES) -> str | None:
    """`home/<entry>` when `root` is, or lies in, one of `entries` of `home`, else None."""
    prefix = home.rstrip("/") + "/"
    if not root.startswith(prefix):
        return None
    first = root[len(prefix) :].split("/", 1)[0]
    return prefix + first if first in entries else None


def _own_installation(root: str) -> str | None:
    """The directory of corral's own code (its packages, or the Python environment running it) that lies
    at or below the writable root `root`, else None."""
    import sys

    prefix = root.rstrip("/") + "/"
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # what holds `policies`
    for place in (os.path.join(here, "supervisor"), os.path.join(here, "policies"), sys.prefix):
        for form in {os.path.normpath(place), os.path.realpath(place)}:
            if form == root or form.startswith(prefix):
                return form
    return None


def _login_homes() -> list[tuple[str, str]]:
    """(home, name) of each account of the password database that can log in (its shell is not nologin or
    false) and has a home other than "/"."""
    found: list[tuple[str, str]] = []
    try:
        entries = pwd.getpwall()
    except OSError:
        return found
    for e in entries:
        shell = os.path.basename(e.pw_shell or "")
        if shell in ("nologin", "false", "sync", "") or not os.path.isabs(e.pw_dir):
            continue
        home = os.path.normpath(e.pw_dir)
        if home != "/":
            found.append((home, e.pw_name))
    return found


def _home_directories() -> list[str]:
    """The caller's home directory as $HOME names it and as the password database does for the effective
    uid (they differ under `sudo -E`, or with HOME set for a tool: root's /root is still root's), each
    also as its real path; "/" and relative values are left out."""
    found: list[str] = []
    candidates = [os.path.expanduser("~")]
    with contextlib.suppress(KeyError, OSError):
        candidates.append(pwd.getpwuid(os.geteuid()).pw_dir)
    for home in candidates:
        if not os.path.isabs(home):
            continue
        for form in (os.path.normpath(home), os.path.realpath(home)):
            if form != "/" and form not in found:
                found.append(form)
    return found
