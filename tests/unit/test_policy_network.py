"""Network allowlist policies: `network.mode = "proxy"`, `network.allow`/`network.deny` in the model, TOML,
profiles and the rule parser and matcher the proxy uses (policies._network)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies import NetworkPolicy, PolicyError, load_policy, policy_from_dict, profiles
from policies._network import match_target, normalise_host, parse_rule

LOOP = ipaddress.IPv4Address("127.0.0.1")


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("example.org", "example.org"),
        ("Example.ORG.", "example.org"),
        ("*.example.com", "*.example.com"),
        ("example.org:8443", "example.org:8443"),
        ("*.Example.com:8443", "*.example.com:8443"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("10.1.2.3", "10.1.2.3"),
        ("10.1.2.3:80", "10.1.2.3:80"),
        ("fd00::1", "fd00::1"),
        ("[fd00::1]", "fd00::1"),
        ("[fd00::1]:8080", "[fd00::1]:8080"),
        ("localhost", "localhost"),
    ],
)
def test_rule_canonical_forms(text: str, canonical: str) -> None:
    assert parse_rule(text, "r").text == canonical


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("https://example.org", "scheme"),
        ("example.org/simple", "path"),
        ("example.org?x=1", "query"),
        ("user@example.org", "user info"),
        ("*", "wildcard"),
        ("*.org", "top-level"),
        ("a.*.example.org", "leading label"),
        ("*example.org", "leading label"),
        ("**.example.org", "leading label"),
        ("example..org", "empty label"),
        ("-a.example.org", "label"),
        ("a" * 64 + ".org", "label"),
        (("a" * 60 + ".") * 5 + "org", "253"),
        ("exa mple.org", "spaces"),
        (" example.org", "spaces"),
        ("example.org:0", "port"),
        ("example.org:65536", "port"),
        ("example.org:+80", "port"),
        ("example.org:080", "port"),
        ("example.org:", "port"),
        ("0x7f.1", "canonical"),
        ("2130706433", "canonical"),
        ("0177.0.0.1", "canonical"),
        ("::ffff:127.0.0.1", "canonical"),
        ("1.2.3.4.5", "last label"),
        ("[fd00::1", "']'"),
        ("[fd00::1]x", "':PORT'"),
        ("fd00::zz", "IPv6"),
        ("ex_ample.org", "label"),
        ("", "expected"),
        ("xn--.org", "label"),
    ],
)
def test_rule_refused(text: str, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_rule(text, "network.allow[0]")
    assert info.value.path == "network.allow[0]"
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", LOOP),
        ("127.1", LOOP),
        ("2130706433", LOOP),
        ("0177.0.0.1", LOOP),
        ("0x7f.0.0.1", LOOP),
        ("0x7F000001", LOOP),
        ("017700000001", LOOP),
        ("[::ffff:127.0.0.1]", LOOP),
        ("::ffff:7f00:1", LOOP),
        ("[::127.0.0.1]", LOOP),
        ("::1", ipaddress.IPv6Address("::1")),
        ("169.254.169.254", ipaddress.IPv4Address("169.254.169.254")),
        ("0xa9fea9fe", ipaddress.IPv4Address("169.254.169.254")),
        ("Example.ORG.", "example.org"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("1.2.3.4.5", None),
        ("08.0.0.1", None),
        ("0x1g.0.0.1", None),
        ("a b", None),
        ("", None),
        ("[::1", None),
        ("evil.com\r\nHost: x", None),
    ],
)
def test_normalise_host(host: str, expected: object) -> None:
    assert normalise_host(host) == expected


def _rules(*texts: str) -> tuple:  # type: ignore[type-arg]
    return tuple(parse_rule(t, "r") for t in texts)


def test_match_ports_wildcards_and_deny_first() -> None:
    allow = _rules("example.org", "*.example.com", "git.example.net:8443", "10.1.2.3")
    deny = _rules("secret.example.com")
    assert match_target(allow, deny, "example.org", 443)[0]
    assert match_target(allow, deny, "example.org", 80)[0]
    assert not match_target(allow, deny, "example.org", 22)[0]  # the port rule: 80 and 443 only
    assert not match_target(allow, deny, "www.example.org", 443)[0]  # a name is exact
    assert match_target(allow, deny, "a.b.example.com", 443)[0]
    assert not match_target(allow, deny, "example.com", 443)[0]  # *. is below, not the apex
    assert not match_target(allow, deny, "badexample.com", 443)[0]
    assert match_target(allow, deny, "git.example.net", 8443)[0]
    assert not match_target(allow, deny, "git.example.net", 443)[0]
    refused, rule = match_target(allow, deny, "secret.example.com", 443)
    assert not refused
    assert rule is not None
    assert rule.text == "secret.example.com"
    assert match_target(allow, deny, ipaddress.IPv4Address("10.1.2.3"), 443)[0]
    assert not match_target(allow, deny, "10.1.2.3", 443)[0]  # a name, not the address
    assert match_target(allow, deny, "nothing.test", 443) == (False, None)


def test_model_canonicalises_and_checks_mode() -> None:
    net = NetworkPolicy(mode="proxy", allow=("Example.ORG", "example.org."), deny=["*.Ads.example.org"])  # type: ignore[arg-type]
    assert net.allow == ("example.org",)
    assert net.deny == ("*.ads.example.org",)
    with pytest.raises(PolicyError) as info:
        NetworkPolicy(mode="none", allow=("example.org",))
    assert info.value.path == "network.allow"
    with pytest.raises(PolicyError) as info:
        NetworkPolicy(mode="proxy", allow=("http://example.org",))
    assert info.value.path == "network.allow[0]"
    with pytest.raises(PolicyError) as info:
        NetworkPolicy(mode="proxy", allow="example.org")  # type: ignore[arg-type]
    assert info.value.path == "network.allow"
    assert NetworkPolicy(mode="proxy").allow == ()  # an empty list: everything refused


def test_toml(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        '[network]\nmode = "proxy"\nallow = ["example.org", "*.example.com:8443"]\ndeny = ["x.example.com"]\n'
    )
    net = load_policy(path, workdir=tmp_path).network
    assert (net.mode, net.allow, net.deny) == (
        "proxy",
        ("example.org", "*.example.com:8443"),
        ("x.example.com",),
    )
    # allow alone means the proxy; a scalar mode drops the rules it would no longer apply
    base = policy_from_dict({"network": {"allow": ["example.org"]}}, workdir="/w")
    assert base.network.mode == "proxy"
    assert policy_from_dict({"network": "none"}, workdir="/w", base=base).network.allow == ()
    kept = policy_from_dict({"network": {"mode": "proxy", "families": ["vsock"]}}, workdir="/w", base=base)
    assert kept.network.allow == ("example.org",)
    for data, where in (
        ({"network": {"mode": "host", "allow": ["example.org"]}}, "network.allow"),
        ({"network": {"mode": "proxy", "allow": ["a.org", "https://b.org"]}}, "network.allow[1]"),
        ({"network": {"mode": "proxy", "deny": "a.org"}}, "network.deny"),
        ({"network": {"mode": "proxy", "allow": ["a.org"], "allowed": []}}, "network.allowed"),
    ):
        with pytest.raises(PolicyError) as info:
            policy_from_dict(data, workdir="/w")
        assert info.value.path == where


def test_profiles_network_allow() -> None:
    policy = profiles.workspace_write("/srv", network_allow=["Example.org", "*.example.com"])
    assert (policy.network.mode, policy.network.allow) == ("proxy", ("example.org", "*.example.com"))
    more = profiles.override(policy, network_allow=iter(["example.net"]), network_deny=["ads.example.com"])
    assert more.network.allow == ("example.org", "*.example.com", "example.net")
    assert more.network.deny == ("ads.example.com",)
    assert profiles.override(policy, network="none").network == NetworkPolicy(mode="none")
    assert profiles.read_only("/srv", network="proxy").network == NetworkPolicy(mode="proxy")
    with pytest.raises(PolicyError) as info:
        profiles.workspace_write("/srv", network="host", network_allow=["example.org"])
    assert info.value.path == "network_allow"
    with pytest.raises(PolicyError) as info:
        profiles.workspace_write("/srv", network_allow=["example.org/x"])
    assert info.value.path == "network_allow[0]"


@given(st.text(max_size=80))
def test_parse_and_normalise_never_escape(text: str) -> None:
    """Only PolicyError leaves parse_rule, nothing leaves normalise_host, and what a rule accepts is
    stable under a second parse."""
    try:
        rule = parse_rule(text, "r")
    except PolicyError:
        pass
    else:
        assert parse_rule(rule.text, "r") == rule
    normalise_host(text)
