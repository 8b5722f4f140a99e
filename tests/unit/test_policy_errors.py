"""PolicyError: structured fields and a message that names the key, the value and the fix."""

from __future__ import annotations

from policies import PolicyError


def test_fields_and_message() -> None:
    err = PolicyError("resources.memory", "expected a size", "5X", source="job.toml")
    assert (err.path, err.reason, err.value, err.source) == (
        "resources.memory",
        "expected a size",
        "5X",
        "job.toml",
    )
    assert str(err) == "job.toml: resources.memory: expected a size (got '5X')"


def test_no_value_and_a_value_of_none_are_told_apart() -> None:
    assert str(PolicyError("a", "missing")) == "a: missing"
    assert str(PolicyError("a", "expected a string", None)) == "a: expected a string (got None)"
    assert PolicyError("a", "missing").value is None


def test_empty_path_names_the_whole_policy() -> None:
    assert str(PolicyError("", "expected a table", [])) == "<policy>: expected a table (got [])"


def test_with_source_copies_every_field() -> None:
    err = PolicyError("network.mode", "expected one of: 'none', 'host'", "lan").with_source("p.toml")
    assert err.source == "p.toml"
    assert (err.path, err.value) == ("network.mode", "lan")
    assert str(err).startswith("p.toml: network.mode: ")
    assert "(got" not in str(PolicyError("x", "r").with_source("f"))


def test_huge_and_unprintable_values_do_not_break_the_message() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert "<unprintable Broken>" in str(PolicyError("x", "bad", Broken()))
    long = str(PolicyError("x", "bad", "a" * 10_000))
    assert len(long) < 300
    assert long.endswith("...)")
    assert "(got" in str(PolicyError("x", "bad", 10**5000))  # int too long for repr()
