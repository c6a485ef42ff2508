"""Storage URLs without their secrets: what is printed and written, and how the password comes
back when a run is opened again.

A password in ``search.storage`` (``postgresql://user:secret@host/db``) is never printed nor
written: ``config.yaml``, ``run.json``, ``report.md`` and every message hold
``postgresql://user:***@host/db`` (:func:`mask_url`). When a masked URL is opened again
(``--resume`` with the run's ``config.yaml``, ``pareto``, ``plot``, ``export``) the password
comes from the environment variable :data:`PASSWORD_ENV`. A URL may also name the variable
itself, ``postgresql://user:${PGPASSWORD}@host/db``: ``${NAME}`` references are expanded only
when the storage is opened, so the written files keep the reference, never the value.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

from common.errors import ConfigError

MASK = "***"
#: where the password of a masked storage URL comes from when the run is opened again
PASSWORD_ENV = "TEMPONAS_STORAGE_PASSWORD"

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: ``scheme://user:password@`` anywhere in a text (messages of drivers and of SQLAlchemy)
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)([^\s@/'\"]+)@")


def _split_password(url: str) -> tuple[str | None, str, str]:
    """(password or None, text before it, text after it) of a ``scheme://user:pw@host`` URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None, url, ""
    if "@" not in parts.netloc or ":" not in parts.netloc.rsplit("@", 1)[0]:
        return None, url, ""
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, password = userinfo.split(":", 1)
    tail = urlunsplit(("", host, parts.path, parts.query, parts.fragment)).removeprefix("//")
    return password, f"{parts.scheme}://{user}:", f"@{tail}"


def mask_url(url: str | None) -> str | None:
    """``url`` with a literal password replaced by ``***`` (a ``${NAME}`` reference is kept:
    it is not the secret)."""
    if url is None:
        return None
    password, head, tail = _split_password(url)
    if password is None or password == MASK or _ENV_REF.fullmatch(password):
        return url
    return f"{head}{MASK}{tail}"


def url_identity(url: str | None) -> str | None:
    """``url`` without its password: two spellings of one storage compare equal."""
    if url is None:
        return None
    password, head, tail = _split_password(url)
    return url if password is None else f"{head[:-1]}{tail}"


def has_credentials(url: str | None) -> bool:
    """True if ``url`` carries a password (literal, masked or a ``${NAME}`` reference)."""
    return url is not None and _split_password(url)[0] is not None


def mask_text(text: str, url: str | None = None) -> str:
    """``text`` with every ``scheme://user:password@`` password masked, and the literal (and
    expanded) password of ``url`` removed wherever else it appears."""
    text = _USERINFO.sub(lambda m: m.group(0) if m.group(2) == MASK or _ENV_REF.fullmatch(
        m.group(2)) else m.group(1) + MASK + "@", text)
    if url is not None:
        for secret in {_split_password(url)[0], _split_password(_expand(url, strict=False))[0]}:
            if secret and secret != MASK and len(secret) >= 3:
                text = text.replace(secret, MASK)
    return text


def _expand(url: str, *, strict: bool) -> str:
    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            if strict:
                raise ConfigError(f"search.storage: {mask_url(url)}: the environment variable "
                                  f"{m.group(1)} is not set")
            return m.group(0)
        return value

    return _ENV_REF.sub(sub, url)


def resolve_url(url: str) -> str:
    """The URL to connect with: ``${NAME}`` expanded; a masked password (``***``, as the run's
    own files hold it) taken from :data:`PASSWORD_ENV`. Errors name the masked URL only."""
    full = _expand(url, strict=True)
    password, head, tail = _split_password(full)
    if password == MASK:
        secret = os.environ.get(PASSWORD_ENV)
        if not secret:
            raise ConfigError(f"search.storage: {url}: the password is not stored with the run; "
                              f"set {PASSWORD_ENV} (or write the URL as "
                              f"{head}${{PGPASSWORD}}{tail})")
        full = f"{head}{secret}{tail}"
    return full
