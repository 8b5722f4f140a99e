"""Policies from TOML files and dicts: `load_policy`, `policy_from_dict`, and fuzzing both."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import (
    EnvPolicy,
    FilesystemPolicy,
    NetworkPolicy,
    Policy,
    PolicyError,
    ResourcePolicy,
    SyscallPolicy,
    _load,
    load_policy,
    policy_from_dict,
    profiles,
)
from policies._model import DEFAULT_SECRET_MARKERS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "policy.md"

FULL = """
profile = "workspace-write"
best_effort = false
workdir = "/srv/repo"

[filesystem]
read = ["/"]
write = ["/srv/cache"]
hide_credentials = false
deny = ["/etc/shadow"]
protected = [".git/hooks", ".git/config"]
execute = ["/usr", "/bin", "/srv/repo"]
private_tmp = true
confine = true
allow_system_write = false

[network]
mode = "none"

[syscalls]
enabled = true
deny = ["ptrace"]
allow = []

[resources]
memory = "512M"
cpus = 1.0
pids = 256
timeout = "60s"
cpu_time = 30
fds = 1024
output = "10M"
fsize = "1G"
disk = "2G"
tmp_size = "256M"

[environment]
clear = false
set = { LANG = "C.UTF-8" }
passthrough = ["GITHUB_TOKEN"]
secret_markers = ["MYCORP"]       # adds to the default markers (default_secret_markers = false drops them)
"""

FULL_POLICY = Policy(
    profile="workspace-write",
    workdir="/srv/repo",
    filesystem=FilesystemPolicy(
        read=("/",),
        write=("/srv/repo", "/srv/cache"),
        deny=("/etc/shadow",),
        protected=(".git/hooks", ".git/config"),
        execute=("/usr", "/bin", "/srv/repo"),
    ),
    network=NetworkPolicy(mode="none"),
    syscalls=SyscallPolicy(deny=("ptrace",)),
    resources=ResourcePolicy(
        memory=512 * 1024**2,
        cpus=1.0,
        pids=256,
        timeout=60.0,
        cpu_time=30.0,
        fds=1024,
        output=10 * 1024**2,
        fsize=1024**3,
        disk=2 * 1024**3,
        tmp_size=256 * 1024**2,
    ),
    environment=EnvPolicy(
        set=(("LANG", "C.UTF-8"),),
        passthrough=("GITHUB_TOKEN",),
        secret_markers=(*DEFAULT_SECRET_MARKERS, "MYCORP"),
    ),
)


def _write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def _no_real_srv() -> None:
    # The examples use /srv/repo; the workdir is a real path, so a symlinked /srv would change it.
    if os.path.realpath("/srv/repo") != "/srv/repo":
        pytest.skip("/srv/repo is a symlink on this machine")


def test_full_file(tmp_path: Path) -> None:
    assert load_policy(_write(tmp_path, FULL)) == FULL_POLICY


def test_the_documented_example_loads_to_the_same_policy(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert blocks, "docs/policy.md has no TOML example"
    assert load_policy(_write(tmp_path, blocks[0])) == FULL_POLICY
    for block in blocks[1:]:
        load_policy(_write(tmp_path, block), workdir="/srv/repo")


def test_file_equals_the_same_profile_built_in_python(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        profile = "workspace-write"
        workdir = "/srv/repo"
        [filesystem]
        write = ["cache"]
        [resources]
        memory = "1.5G"
        timeout = 90
        [environment]
        set = { TERM = "dumb" }
        passthrough = ["GITHUB_TOKEN"]
        """,
    )
    assert load_policy(path) == profiles.workspace_write(
        "/srv/repo",
        allow_write=["cache"],
        memory="1.5G",
        timeout="90s",
        env=["GITHUB_TOKEN", "TERM=dumb"],
    )


def test_empty_file_is_the_model_default(tmp_path: Path) -> None:
    # The model's defaults, with the credential stores hidden as the built-in profiles hide them (a file
    # naming no profile must not make ~/.ssh readable without saying so).
    policy = load_policy(_write(tmp_path, ""), workdir="/srv/repo")
    blank = Policy(workdir="/srv/repo")
    assert policy == dataclasses.replace(
        blank, filesystem=dataclasses.replace(blank.filesystem, deny=profiles.credential_paths())
    )
    assert policy.profile == "custom"
    dropped = load_policy(_write(tmp_path, "[filesystem]\nhide_credentials = false\n"), workdir="/srv/repo")
    assert dropped == blank


def test_write_and_protected_add_to_the_profile_and_other_lists_replace(tmp_path: Path) -> None:
    policy = policy_from_dict(
        {
            "profile": "workspace-write",
            "filesystem": {"write": ["/a"], "read": ["/usr"], "protected": [".env"]},
        },
        workdir="/srv/repo",
    )
    assert policy.filesystem.write == ("/srv/repo", "/a")
    assert policy.filesystem.read == ("/usr",)
    # Protecting .env must not silently drop the git protection (and with it the post-run git scan).
    assert policy.filesystem.protected == (".git/hooks", ".git/config", ".env")


def test_dropping_the_git_protection_is_named() -> None:
    def protected(fs: dict[str, object]) -> tuple[str, ...]:
        table = {"profile": "workspace-write", "filesystem": fs}
        return policy_from_dict(table, workdir="/srv/repo").filesystem.protected

    assert protected({"protected": []}) == (".git/hooks", ".git/config")
    assert protected({"protect_git": False}) == ()
    assert protected({"protect_git": False, "protected": [".env"]}) == (".env",)
    with pytest.raises(PolicyError) as err:
        protected({"protect_git": "no"})
    assert err.value.path == "filesystem.protect_git"


def test_base_is_used_when_the_file_names_no_profile() -> None:
    policy = policy_from_dict({"resources": {"pids": 5}}, workdir="/w", base="full-access")
    assert policy == profiles.full_access("/w", pids=5)
    named = policy_from_dict({"profile": "read-only"}, workdir="/w", base="full-access")
    assert named == profiles.read_only("/w")


def test_base_policy_values_are_the_defaults() -> None:
    base = profiles.workspace_write("/w", memory="1G", allow_write=["/x"])
    policy = policy_from_dict({"filesystem": {"write": ["/y"]}, "resources": {"pids": 3}}, base=base)
    assert policy.workdir == "/w"
    assert policy.filesystem.write == ("/w", "/x", "/y")
    assert policy.resources.memory == 1024**3
    assert policy.resources.pids == 3
    cleared = policy_from_dict({"resources": {"memory": "unlimited"}}, base=base)
    assert cleared.resources.memory is None


def test_workdir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    (tmp_path / "repo").mkdir()
    path = _write(sub, 'workdir = "../repo"\n[filesystem]\nwrite = ["out"]\n')
    real = os.path.realpath(tmp_path)
    # relative to the file's directory, not to the current directory
    monkeypatch.chdir("/")
    policy = load_policy(path)
    assert policy.workdir == f"{real}/repo"
    assert policy.filesystem.write == (f"{real}/repo/out",)
    # the argument wins over the file
    assert load_policy(path, workdir="/elsewhere").workdir == "/elsewhere"
    # none anywhere: the current directory
    monkeypatch.chdir(sub)
    assert load_policy(_write(sub, "", "empty.toml")).workdir == os.path.realpath(sub)
    # policy_from_dict: relative to the current directory
    assert policy_from_dict({"workdir": ".."}).workdir == real


def test_network_shorthand() -> None:
    assert policy_from_dict({"network": "host"}, workdir="/w").network.mode == "host"


def test_filesystem_watch() -> None:
    assert policy_from_dict({}, workdir="/w").filesystem.watch is True
    assert policy_from_dict({"filesystem": {"watch": False}}, workdir="/w").filesystem.watch is False


def test_network_families_and_netlink() -> None:
    table = {"mode": "host", "families": ["vsock", "packet", "vsock"], "netlink": ["generic"]}
    network = policy_from_dict({"network": table}, workdir="/w").network
    assert (network.mode, network.families, network.netlink) == ("host", ("vsock", "packet"), ("generic",))
    # The shorthand and a base policy keep the base's families.
    base = policy_from_dict({"network": table}, workdir="/w")
    assert policy_from_dict({"network": "none"}, workdir="/w", base=base).network.families == (
        "vsock",
        "packet",
    )


def test_unlimited_and_string_numbers() -> None:
    policy = policy_from_dict(
        {"resources": {"pids": "64", "cpus": "0.5", "fds": "max", "memory": "unlimited"}},
        workdir="/w",
    )
    assert (policy.resources.pids, policy.resources.cpus, policy.resources.fds) == (64, 0.5, None)


# --- errors ------------------------------------------------------------------------------------


def test_invalid_toml_names_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, 'profile = "read-only"\n[resources\nmemory = 1\n')
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    err = info.value
    assert err.path == ""
    assert err.source == str(path)
    assert "line 2" in err.reason
    assert "column" in err.reason
    assert str(err).startswith(f"{path}: ")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.source == str(path)
    assert str(path) in info.value.reason
    assert "No such file" in info.value.reason


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert info.value.source == str(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    path.chmod(0)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert "Permission denied" in info.value.reason


def test_os_errors_become_policy_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_load, "_read_policy_file", refuse)
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "p.toml")
    assert info.value.path == ""
    assert "Permission denied" in info.value.reason
    assert isinstance(info.value.__cause__, PermissionError)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'profile = "r\xe9ad-only"\n')
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert "UTF-8" in info.value.reason


def test_bad_path_argument() -> None:
    with pytest.raises(PolicyError):
        load_policy(3)  # type: ignore[arg-type]
    with pytest.raises(PolicyError):
        load_policy(b"/x.toml")  # type: ignore[arg-type]


def test_value_errors_in_a_file_carry_the_source(tmp_path: Path) -> None:
    path = _write(tmp_path, '[filesystem]\nwrite = ["/a", "/b", "\\u0000"]\n')
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.path == "filesystem.write[2]"
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: filesystem.write[2]: ")


def test_errors_from_the_base_profile_carry_the_source() -> None:
    with pytest.raises(PolicyError) as info:
        policy_from_dict({"profile": "rw"}, source="ci.toml", workdir="/w")
    assert (info.value.path, info.value.source, info.value.value) == ("profile", "ci.toml", "rw")
    assert "workspace-write" in info.value.reason


BAD_DICTS: list[tuple[Any, str, object]] = [
    ([], "", []),
    ("profile = 1", "", "profile = 1"),
    ({1: "x"}, "", 1),
    ({"profil": "read-only"}, "profil", "profil"),
    ({"profile": 3}, "profile", 3),
    ({"best_effort": "yes"}, "best_effort", "yes"),
    ({"workdir": 5}, "workdir", 5),
    ({"workdir": ""}, "workdir", ""),
    ({"filesystem": []}, "filesystem", []),
    ({"filesystem": {"writ": []}}, "filesystem.writ", "writ"),
    ({"filesystem": {"write": "/x"}}, "filesystem.write", "/x"),
    ({"filesystem": {"write": ["/a", "/b", 3]}}, "filesystem.write[2]", 3),
    ({"filesystem": {"read": [["/"]]}}, "filesystem.read[0]", ["/"]),
    ({"filesystem": {"deny": ["/x\0"]}}, "filesystem.deny[0]", "/x\0"),
    ({"filesystem": {"execute": {}}}, "filesystem.execute", {}),
    ({"filesystem": {"protected": ["/abs"]}}, "filesystem.protected[0]", "/abs"),
    ({"filesystem": {"protected": ["a/../../b"]}}, "filesystem.protected[0]", "a/../../b"),
    ({"filesystem": {"confine": 0}}, "filesystem.confine", 0),
    ({"filesystem": {"private_tmp": "true"}}, "filesystem.private_tmp", "true"),
    ({"network": {"mode": "bridge"}}, "network.mode", "bridge"),
    ({"network": {}}, "network.mode", None),
    ({"network": {"mod": "none"}}, "network.mod", "mod"),
    ({"network": "wifi"}, "network", "wifi"),
    ({"network": 1}, "network", 1),
    ({"network": {"mode": "none", "families": "vsock"}}, "network.families", "vsock"),
    ({"network": {"mode": "none", "families": ["vsock", "AF_ALG"]}}, "network.families[1]", "AF_ALG"),
    ({"network": {"mode": "none", "netlink": ["nf"]}}, "network.netlink[0]", "nf"),
    ({"filesystem": {"watch": "no"}}, "filesystem.watch", "no"),
    ({"syscalls": {"deny": ["ptrace", "Mount"]}}, "syscalls.deny[1]", "Mount"),
    ({"syscalls": {"allow": ["a b"]}}, "syscalls.allow[0]", "a b"),
    ({"syscalls": {"deny": ["bpf"], "allow": ["bpf"]}}, "syscalls.allow[0]", "bpf"),
    ({"syscalls": {"enabled": "no"}}, "syscalls.enabled", "no"),
    ({"resources": {"memory": "12X"}}, "resources.memory", "12X"),
    ({"resources": {"memory": 0}}, "resources.memory", 0),
    ({"resources": {"memory": -1}}, "resources.memory", -1),
    ({"resources": {"output": True}}, "resources.output", True),
    ({"resources": {"fsize": 1.5}}, "resources.fsize", 1.5),
    ({"resources": {"cpus": 0}}, "resources.cpus", 0),
    ({"resources": {"cpus": 1024.5}}, "resources.cpus", 1024.5),
    ({"resources": {"pids": 0}}, "resources.pids", 0),
    ({"resources": {"pids": 1.5}}, "resources.pids", 1.5),
    ({"resources": {"fds": "lots"}}, "resources.fds", "lots"),
    ({"resources": {"timeout": 0}}, "resources.timeout", 0),
    ({"resources": {"timeout": "1y"}}, "resources.timeout", "1y"),
    ({"resources": {"timeout": float("inf")}}, "resources.timeout", float("inf")),
    ({"resources": {"cpu_time": -2}}, "resources.cpu_time", -2),
    ({"resources": {"memroy": 1}}, "resources.memroy", "memroy"),
    ({"environment": {"clear": 1}}, "environment.clear", 1),
    ({"environment": {"set": ["A=1"]}}, "environment.set", ["A=1"]),
    ({"environment": {"set": {"A": 1}}}, "environment.set.A", 1),
    ({"environment": {"set": {"A=B": "1"}}}, "environment.set.A=B", "A=B"),
    ({"environment": {"set": {"": "1"}}}, "environment.set.", ""),
    ({"environment": {"passthrough": ["OK", ""]}}, "environment.passthrough[1]", ""),
    ({"environment": {"passthrough": "HOME"}}, "environment.passthrough", "HOME"),
    ({"environment": {"secret_markers": [""]}}, "environment.secret_markers[0]", ""),
    ({"environment": {"secrets": []}}, "environment.secrets", "secrets"),
]


@pytest.mark.parametrize(("data", "path", "value"), BAD_DICTS)
def test_bad_values_name_path_and_value(data: Any, path: str, value: object) -> None:
    with pytest.raises(PolicyError) as info:
        policy_from_dict(data, workdir="/w", source="p.toml")
    err = info.value
    assert err.path == path
    assert err.source == "p.toml"
    assert str(err).startswith(f"p.toml: {path or '<policy>'}: ")
    if value is not None:
        assert err.value == value
        assert repr(value) in str(err)


def test_unknown_keys_list_the_valid_ones() -> None:
    with pytest.raises(PolicyError) as info:
        policy_from_dict({"resources": {"memroy": "1G"}}, workdir="/w")
    for key in (
        "memory",
        "cpus",
        "pids",
        "timeout",
        "cpu_time",
        "fds",
        "output",
        "fsize",
        "disk",
        "tmp_size",
    ):
        assert key in info.value.reason


def test_bad_base() -> None:
    with pytest.raises(PolicyError) as info:
        policy_from_dict({}, base="rw", workdir="/w")
    assert info.value.path == "base"
    with pytest.raises(PolicyError) as info:
        policy_from_dict({}, base=3, workdir="/w")  # type: ignore[arg-type]
    assert info.value.path == "base"


# --- fuzzing ---------------------------------------------------------------------------------------

KEYS = [
    "profile",
    "best_effort",
    "workdir",
    "filesystem",
    "network",
    "syscalls",
    "resources",
    "environment",
    "read",
    "write",
    "deny",
    "protected",
    "execute",
    "private_tmp",
    "confine",
    "mode",
    "enabled",
    "allow",
    "memory",
    "cpus",
    "pids",
    "timeout",
    "cpu_time",
    "fds",
    "output",
    "fsize",
    "disk",
    "tmp_size",
    "clear",
    "set",
    "passthrough",
    "secret_markers",
    "default_secret_markers",
]
INTERESTING = [
    "",
    "/",
    "/srv/x",
    "rel/path",
    "..",
    "../..",
    ".git/hooks",
    "a\0b",
    "/\ud800",
    "none",
    "host",
    "read-only",
    "workspace-write",
    "full-access",
    "custom",
    "unlimited",
    "512M",
    "1.5G",
    "0",
    "-1",
    "1h",
    "nan",
    "inf",
    "ptrace",
    "A=B",
    "KEY",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(INTERESTING),
    st.datetimes(),
    st.dates(),
    st.times(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _either(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Plausible values half the time, anything at all the other half."""
    return valid | VALUES


def _section(**keys: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return _either(st.fixed_dictionaries({}, optional={k: _either(v) for k, v in keys.items()}))


_PATHS = st.lists(st.sampled_from(["/", "/srv/x", "rel", "a/../b", "/x/"]) | SCALARS, max_size=3)
_NAMES = st.lists(st.sampled_from(["HOME", "GITHUB_TOKEN", "A=B", ""]) | SCALARS, max_size=3)
_SIZE = st.sampled_from(["512M", "1.5G", "unlimited", "64", "0", "1e3"]) | st.integers()
_DURATION = st.sampled_from(["60s", "1h30m", "unlimited", "0.5", "-1"]) | st.floats()
WELL_SHAPED = st.fixed_dictionaries(
    {},
    optional={
        "profile": _either(st.sampled_from(profiles.NAMES)),
        "workdir": _either(st.sampled_from(["/srv/x", "rel", "."])),
        "best_effort": _either(st.booleans()),
        "filesystem": _section(
            read=_PATHS,
            write=_PATHS,
            deny=_PATHS,
            execute=_PATHS,
            protected=st.lists(st.sampled_from([".git/hooks", "x/../..", "/abs", "."]), max_size=3),
            private_tmp=st.booleans(),
            confine=st.booleans(),
        ),
        "network": _section(mode=st.sampled_from(["none", "host"])) | st.sampled_from(["host"]),
        "syscalls": _section(
            enabled=st.booleans(),
            deny=st.lists(st.sampled_from(["ptrace", "bpf", "Mount"]), max_size=3),
            allow=st.lists(st.sampled_from(["ptrace", "bpf"]), max_size=2),
        ),
        "resources": _section(
            memory=_SIZE,
            output=_SIZE,
            fsize=_SIZE,
            cpus=st.floats(min_value=-1, max_value=2000) | st.sampled_from(["0.5", "2"]),
            pids=st.integers(min_value=-1, max_value=2**23) | st.sampled_from(["64"]),
            fds=st.integers(min_value=-1, max_value=2**32),
            timeout=_DURATION,
            cpu_time=_DURATION,
        ),
        "environment": _section(
            clear=st.booleans(),
            set=st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
            passthrough=_NAMES,
            secret_markers=_NAMES,
            default_secret_markers=st.booleans(),
        ),
    },
)
DOCUMENTS = st.one_of(
    WELL_SHAPED,  # bad leaves in a good shape, so that validation gets past the first level
    st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6) | st.integers(), VALUES, max_size=4),
    VALUES,
)


def _check(data: object) -> None:
    """policy_from_dict returns a hashable Policy or raises PolicyError; anything else fails."""
    try:
        result: object = policy_from_dict(data, source="fuzz.toml")
    except PolicyError as err:
        result = err
    if isinstance(result, PolicyError):
        assert isinstance(result.path, str)
        assert result.source == "fuzz.toml"
        assert str(result).startswith("fuzz.toml: ")
    else:
        assert isinstance(result, Policy)
        hash(result)
        assert result.workdir is not None
        assert os.path.isabs(result.workdir)


FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@given(DOCUMENTS)
@FUZZ
def test_fuzz_arbitrary_documents(data: object) -> None:
    _check(data)


VALID: dict[str, Any] = {
    "profile": "workspace-write",
    "best_effort": False,
    "workdir": "/srv/repo",
    "filesystem": {
        "read": ["/"],
        "write": ["/srv/cache"],
        "hide_credentials": False,
        "deny": ["/etc/shadow"],
        "protected": [".git/hooks", ".git/config"],
        "execute": ["/usr", "/bin", "/srv/repo"],
        "private_tmp": True,
        "confine": True,
    },
    "network": {"mode": "none"},
    "syscalls": {"enabled": True, "deny": ["ptrace"], "allow": []},
    "resources": {
        "memory": "512M",
        "cpus": 1.0,
        "pids": 256,
        "timeout": "60s",
        "cpu_time": 30,
        "fds": 1024,
        "output": "10M",
        "fsize": "1G",
        "disk": "2G",
        "tmp_size": "256M",
    },
    "environment": {
        "clear": False,
        "set": {"LANG": "C.UTF-8"},
        "passthrough": ["GITHUB_TOKEN"],
        "default_secret_markers": True,
        "secret_markers": ["MYCORP"],
    },
}


def _slots(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key/index path inside VALID."""
    found: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            found += _slots(child, (*prefix, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            found += _slots(child, (*prefix, i))
    return found


SLOTS = _slots(VALID)


def test_the_valid_dict_is_valid() -> None:
    assert policy_from_dict(VALID) == FULL_POLICY


@given(
    st.lists(
        st.tuples(
            st.sampled_from(SLOTS),
            st.sampled_from(["replace", "delete", "add"]),
            VALUES,
            st.text(max_size=8) | st.sampled_from(KEYS),
        ),
        min_size=1,
        max_size=4,
    )
)
@FUZZ
def test_fuzz_mutations_of_a_valid_policy(mutations: list[tuple[Any, ...]]) -> None:
    data = copy.deepcopy(VALID)
    for slot, action, value, new_key in mutations:
        parent: Any = data
        try:
            for key in slot[:-1]:
                parent = parent[key]
            last = slot[-1]
            if action == "replace":
                parent[last] = value
            elif action == "delete":
                del parent[last]
            elif isinstance(parent, dict):
                parent[new_key] = value
            elif isinstance(parent, list):
                parent.append(value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this slot's parent
    _check(data)


@given(st.text(max_size=200))
@FUZZ
def test_fuzz_toml_text(text: str) -> None:
    # Arbitrary text through the whole loader: TOML syntax errors are PolicyErrors too.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            result: object = load_policy(path)
        except PolicyError as err:
            result = err
    if isinstance(result, PolicyError):
        assert result.source == str(path)
    else:
        assert isinstance(result, Policy)
