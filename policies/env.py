"""The environment a child receives: the caller's, minus secrets, plus what the policy sets.

Pure functions: the caller passes its environment in (normally `os.environ`); nothing here reads it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from policies._model import DEFAULT_SECRET_MARKERS, Policy
from policies._network import proxy_environment

__all__ = ["KNOWN_SECRET_NAMES", "filter_environment", "is_secret_name", "is_secret_value"]


#: Secret whatever the markers say: credential caches and agents named by variables with no marker word.
KNOWN_SECRET_NAMES: frozenset[str] = frozenset({"KRB5CCNAME", "SSH_AUTH_SOCK", "GPG_AGENT_INFO"})

#: The shell's own variables, never secret although PWD is a marker word (MYSQL_PWD is a password).
_NEVER_SECRET = frozenset({"PWD", "OLDPWD"})

# Words of a name: runs of capitals (an acronym, up to a following capitalised word), capitalised or
# lower-case runs (camelCase humps), digits. Everything else (`_`, `-`, `.`) separates.
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

# A URL with userinfo (`scheme://user:password@host`, `https://TOKEN@host`): DATABASE_URL, a proxy with
# credentials, a git remote with a token.
_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s]+@")

# A private key (PEM: `-----BEGIN OPENSSH PRIVATE KEY-----`, RSA, EC, ENCRYPTED...), whatever the variable is
# called: `GH_APP_PEM`, `DEPLOY_SSH` held one and passed.
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")

# A credential as a `name=value` setting inside a value: a connection string (Azure's `AccountKey=`,
# `SharedAccessKey=`, ADO.NET's `Password=`/`Pwd=`, libpq's `password=`), a URL's query (`?password=`,
# `&token=`, `?api_key=`), or an HTTP authorization header given to a tool (`GIT_CONFIG_PARAMETERS` with
# `http.extraHeader=Authorization: Bearer ...`). `AZURE_STORAGE_CONNECTION_STRING` and a libpq `DB_CONN`
# passed: no marker word in their names, no userinfo in their values.
_SETTING = re.compile(
    r"(?:^|[;&?\s'\"])\s*(?:password|passwd|pwd|pass|accountkey|sharedaccesskey|sharedaccesssignature|secret|"
    r"client_secret|token|access_token|api_?key|sig)\s*=\s*[^;&\s'\"]"
    r"|authorization\s*:\s*(?:bearer|basic|token)\s+\S",
    re.IGNORECASE,
)


#: The CLI contract's four markers: a name CONTAINING one of them is secret (SSHKEY, SECRETKEY, PRIVATEKEY,
#: TOKENVALUE), as the CLI contract says, not only a word equal to one; except inside `_BENIGN_WORDS`.
_CONTAINED_MARKERS = frozenset({"key", "secret", "token", "password"})

#: Words that contain one of `_CONTAINED_MARKERS` and are known to name no secret (the variables people
#: meet: KEYBOARD_LAYOUT, TOKENIZERS_PARALLELISM of Hugging Face's tokenizers, pytest's MONKEYPATCH).
_BENIGN_WORDS = frozenset({"keyboard", "keyboards", "tokenizer", "tokenizers", "monkey", "monkeypatch"})


def _word_is_secret(word: str, marker: str) -> bool:
    # KEY, SECRET, TOKEN and PASSWORD anywhere in a word but a known benign one (the CLI contract: "names
    # containing"); any other marker as a whole word or its plural (PAT, PATS: not PATH), and a long one
    # also at a word's end (PGPASSPHRASE, CLIENTCREDENTIAL).
    if marker in _CONTAINED_MARKERS:
        return marker in word and word not in _BENIGN_WORDS
    return word in (marker, marker + "s") or (len(marker) >= 5 and word.endswith(marker))


def is_secret_name(name: str, markers: Iterable[str] = DEFAULT_SECRET_MARKERS) -> bool:
    """Return True if a WORD of `name` is one of `markers` (case-insensitive), or `name` is a known
    credential variable (`KNOWN_SECRET_NAMES`).

    Words are split at `_` and other punctuation and at camelCase humps: ``GITHUB_TOKEN``,
    ``MyApiKey``, ``NPM_CONFIG__AUTH``, ``MYSQL_PWD`` and ``CI_JOB_JWT`` are secret; ``PATH`` and the
    shell's ``PWD``/``OLDPWD`` are not. The markers KEY, SECRET, TOKEN and PASSWORD match anywhere in a
    word (``SSHKEY``, ``SECRETKEY``: the CLI contract's "names containing"), except in a few known benign
    words (``KEYBOARD_LAYOUT``, ``TOKENIZERS_PARALLELISM``, ``MONKEYPATCH`` pass); any other marker matches a
    whole word or its plural, and one of five letters or more also the end of a word (``PGPASSPHRASE``).
    Raises nothing; empty markers are ignored.
    """
    if name in _NEVER_SECRET:
        return False
    if name.upper() in KNOWN_SECRET_NAMES:
        return True
    folded = [m.casefold() for m in markers if m]
    return any(_word_is_secret(word.casefold(), m) for word in _WORDS.findall(name) for m in folded)


def is_secret_value(value: str) -> bool:
    """Return True if `value` holds a credential, whatever the variable is called: a URL with userinfo
    (``postgres://u:pw@db/x``, ``https://TOKEN@host/``), a private key (PEM), a ``name=value`` credential
    setting (``AccountKey=...``, ``Password=...``, ``?token=...``; `_SETTING`) or an HTTP authorization
    header (``Authorization: Bearer ...``). Raises nothing.
    """
    if "://" in value and _USERINFO.search(value) is not None:
        return True
    if "PRIVATE KEY-----" in value and _PRIVATE_KEY.search(value) is not None:
        return True
    return ("=" in value or ":" in value) and _SETTING.search(value) is not None


def _valid(name: str, value: str) -> bool:
    # execve cannot carry these; a caller's mapping (not os.environ) might hold them.
    return bool(name) and "=" not in name and "\0" not in name and "\0" not in value


def filter_environment(policy: Policy, environ: Mapping[str, str]) -> dict[str, str]:
    """Return the environment for a child run under `policy`, given the caller's `environ`.

    Start from `environ` (or from nothing if ``environment.clear``); drop every name that is secret
    (`is_secret_name`: a marker word, case-insensitive) or whose value is a URL with credentials
    (`is_secret_value`) unless it is in ``environment.passthrough``; with ``clear``,
    passthrough names are still copied from `environ` when present; then apply ``environment.set``,
    which always wins. Under network mode "proxy", the proxy variables (`proxy_environment`) replace the
    caller's, before ``environment.set``. Entries of `environ` that no process could receive (empty
    names, '=' or NUL in a name, NUL in a value) are dropped. Raises nothing; `environ` is not modified.
    """
    rules = policy.environment
    passthrough = set(rules.passthrough)
    if rules.clear:
        env = {name: environ[name] for name in rules.passthrough if name in environ}
    else:
        env = {
            name: value
            for name, value in environ.items()
            if name in passthrough
            or not (is_secret_name(name, rules.secret_markers) or is_secret_value(value))
        }
    env = {name: value for name, value in env.items() if _valid(name, value)}
    if policy.network.mode == "proxy":  # the caller's own proxy settings mean nothing in the sandbox
        env.update(proxy_environment())
    env.update(rules.set)
    return env
