"""The environment a child receives: `filter_environment` and `is_secret_name`."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import (
    EnvPolicy,
    Policy,
    PolicyError,
    filter_environment,
    is_secret_name,
    is_secret_value,
    policy_from_dict,
    profiles,
)

CALLER = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/me",
    "LANG": "en_US.UTF-8",
    "GITHUB_TOKEN": "ghp_x",
    "aws_secret_access_key": "s",
    "DB_Password": "p",
    "OPENAI_API_KEY": "k",
    "KEYBOARD_LAYOUT": "us",  # contains KEY, but not as a word
    "TOKENIZERS_PARALLELISM": "false",
    "MYSQL_PWD": "pw",
    "PWD": "/srv",
    "DATABASE_URL": "postgres://app:hunter2@db/app",
    "PLAIN_URL": "https://example.invalid/x?a=b@c",
}


def _env(**kw: object) -> Policy:
    return Policy(environment=EnvPolicy(**kw))  # type: ignore[arg-type]


def test_default_drops_secret_looking_names() -> None:
    assert filter_environment(Policy(), CALLER) == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/me",
        "LANG": "en_US.UTF-8",
        "KEYBOARD_LAYOUT": "us",
        "TOKENIZERS_PARALLELISM": "false",
        "PWD": "/srv",
        "PLAIN_URL": "https://example.invalid/x?a=b@c",
    }


def test_passthrough_keeps_a_url_with_credentials() -> None:
    env = filter_environment(_env(passthrough=("DATABASE_URL",)), CALLER)
    assert env["DATABASE_URL"] == "postgres://app:hunter2@db/app"


def test_passthrough_keeps_a_secret_name() -> None:
    env = filter_environment(_env(passthrough=("GITHUB_TOKEN", "NOT_SET_TOKEN")), CALLER)
    assert env["GITHUB_TOKEN"] == "ghp_x"
    assert "NOT_SET_TOKEN" not in env
    assert "OPENAI_API_KEY" not in env


def test_set_wins_and_may_use_secret_names() -> None:
    env = filter_environment(_env(set=(("LANG", "C.UTF-8"), ("API_KEY", "given"))), CALLER)
    assert env["LANG"] == "C.UTF-8"
    assert env["API_KEY"] == "given"


def test_clear_starts_empty_but_keeps_passthrough_and_set() -> None:
    policy = _env(clear=True, passthrough=("HOME", "GITHUB_TOKEN", "MISSING"), set=(("A", "1"),))
    assert filter_environment(policy, CALLER) == {
        "HOME": "/home/me",
        "GITHUB_TOKEN": "ghp_x",
        "A": "1",
    }


def test_custom_markers_replace_the_defaults() -> None:
    env = filter_environment(_env(secret_markers=("path",)), CALLER)
    assert "PATH" not in env
    assert env["GITHUB_TOKEN"] == "ghp_x"


def _from_file(environment: dict[str, object]) -> dict[str, str]:
    policy = policy_from_dict({"profile": "workspace-write", "environment": environment}, workdir="/srv/repo")
    return filter_environment(policy, {**CALLER, "MYCORP_ID": "x"})


def test_a_policy_files_markers_add_to_the_defaults() -> None:
    # One marker of the user's own must not let DB_PASSWORD through (as one `deny` entry must not un-hide
    # ~/.ssh): a file's `secret_markers` adds to the base's.
    env = _from_file({"secret_markers": ["MYCORP"]})
    assert "MYCORP_ID" not in env
    assert "DB_Password" not in env
    assert "OPENAI_API_KEY" not in env
    assert env["PATH"] == "/usr/bin:/bin"


def test_dropping_the_default_markers_is_named() -> None:
    env = _from_file({"default_secret_markers": False, "secret_markers": ["MYCORP"]})
    assert "MYCORP_ID" not in env
    assert env["DB_Password"] == "p"
    assert env["OPENAI_API_KEY"] == "k"
    with pytest.raises(PolicyError) as err:
        _from_file({"default_secret_markers": "no"})
    assert err.value.path == "environment.default_secret_markers"


def test_through_the_profile_options() -> None:
    policy = profiles.read_only("/srv", env=["GITHUB_TOKEN", "TERM=dumb"])
    env = filter_environment(policy, CALLER)
    assert env["GITHUB_TOKEN"] == "ghp_x"
    assert env["TERM"] == "dumb"
    assert "DB_Password" not in env


def test_unpassable_entries_are_dropped_and_input_is_untouched() -> None:
    caller = {"": "x", "A=B": "1", "N\0": "1", "V": "a\0b", "OK": "1"}
    snapshot = dict(caller)
    assert filter_environment(Policy(), caller) == {"OK": "1"}
    assert caller == snapshot


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("GITHUB_TOKEN", True),
        ("github_token", True),
        ("MyApiKey", True),
        ("CLIENT_SECRET", True),
        ("PGPASSWORD", True),
        ("MYSQL_PWD", True),
        ("DOCKER_AUTH_CONFIG", True),
        ("CI_JOB_JWT", True),
        ("GH_PAT", True),
        ("NPM_CONFIG__AUTH", True),
        ("SENTRY_DSN", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("GOOGLE_APPLICATION_CREDENTIALS", True),
        ("SSH_KEYS", True),
        ("KRB5CCNAME", True),
        ("SSH_AUTH_SOCK", True),
        ("clientSecret", True),
        ("DB_PASS", True),
        ("AWS_CREDS", True),
        ("GIT_ASKPASS", False),
        ("BYPASS_CACHE", False),
        ("COMPASS_HOME", False),
        ("HOME", False),
        ("PWD", False),
        ("OLDPWD", False),
        ("KEYBOARD_LAYOUT", False),
        ("TOKENIZERS_PARALLELISM", False),
        ("MONKEYPATCH", False),
        ("MonkeyPatch", False),
        ("PATCH_LEVEL", False),
        ("XAUTHORITY", False),
        ("OAUTHLIB_INSECURE_TRANSPORT", False),
        ("PATH", False),
        ("", False),
    ],
)
def test_is_secret_name(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


@pytest.mark.parametrize(
    ("value", "secret"),
    [
        ("postgres://app:hunter2@db:5432/app", True),
        ("https://ghp_abc@github.invalid/o/r.git", True),
        ("http://user:pw@proxy.invalid:3128", True),
        ("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=abc==;", True),
        ("Server=db;Database=app;User Id=app;Password=hunter2;", True),
        ("host=db user=app password=hunter2", True),
        ("https://h.invalid/f?sv=1&sig=abc", True),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----", True),
        ("http.extraHeader=Authorization: Bearer abc", True),
        ("Server=db;Database=app;Trusted_Connection=True", False),
        ("--color=auto", False),
        ("token_file=/run/x", False),
        ("-----BEGIN CERTIFICATE-----", False),
        ("https://example.invalid/path", False),
        ("https://example.invalid/x?q=a@b", False),
        ("git@github.invalid:o/r.git", False),
        ("me@example.invalid", False),
        ("/usr/bin:/bin", False),
    ],
)
def test_is_secret_value(value: str, secret: bool) -> None:
    assert is_secret_value(value) is secret


def test_is_secret_name_custom_markers_and_empty_marker() -> None:
    assert is_secret_name("CREDENTIALS_FILE", ("credential",))
    assert not is_secret_name("HOME", ("",))  # an empty marker would match everything


_NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\0="), min_size=1, max_size=12)


@given(
    st.dictionaries(_NAMES | st.sampled_from(["A_KEY", "TOKEN", "x"]), st.text(max_size=8)),
    st.lists(_NAMES, max_size=3),
    st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_filter_invariants(caller: dict[str, str], passthrough: list[str], clear: bool) -> None:
    policy = _env(passthrough=tuple(passthrough), clear=clear, set=(("SET_KEY", "v"),))
    env = filter_environment(policy, caller)
    assert env["SET_KEY"] == "v"
    for name, value in env.items():
        if name == "SET_KEY":
            continue
        assert caller[name] == value
        if name not in passthrough:
            assert not clear
            assert not is_secret_name(name)
            assert not is_secret_value(value)


@pytest.mark.parametrize(
    "name",
    ["SSHKEY", "PRIVATEKEY", "SECRETKEY", "MYKEY", "SECRETSAUCE", "TOKENVALUE", "PASSWORDHASH", "sshKey2"],
)
def test_design_markers_anywhere_in_a_word_are_secret(name: str) -> None:
    # DESIGN.md: "minus names containing KEY, SECRET, TOKEN or PASSWORD (case-insensitive)".
    assert is_secret_name(name)
    assert name not in filter_environment(Policy(), {name: "x", "KEEP": "1"})


BENIGN = ["KEYBOARD_LAYOUT", "TOKENIZERS_PARALLELISM", "MONKEYPATCH", "PATH", "GH_PATCH"]


@pytest.mark.parametrize("name", BENIGN)
def test_known_benign_words_still_pass(name: str) -> None:
    assert not is_secret_name(name)
