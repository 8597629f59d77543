"""Who is calling: API keys, their scopes, and which jobs a caller may see.

Keys are random tokens sent as ``Authorization: Bearer KEY``. The keys file
(``KRYPTON_KEYS_FILE``, managed with ``krypton keys``) holds only their
SHA-256, so a leaked file grants nothing. A key has a scope: ``heatmaps``
(submit and read its own jobs, predict, list models and datasets) or ``admin``
(all of that, every job, tuning and the operator routes). A job belongs to the
key that made it, by the key's id (a digest of the token, so a key revoked and
added again under the same name is a new key); another ``heatmaps`` key is
told it does not exist.

Without a keys file the service runs open, as Redis's protected mode allows:
only on a loopback address, or behind a gateway that authenticates when the
operator says so (``KRYPTON_AUTH=none``). :func:`access_mode` decides.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Self

from pydantic import Field, model_validator

from krypton.config_files import ARRAY, FileModel, listed_once

__all__ = [
    "SCOPES",
    "ApiKey",
    "Caller",
    "KeyStore",
    "KeysFileError",
    "OPEN",
    "Scope",
    "access_mode",
    "is_loopback",
]

Scope = Literal["heatmaps", "admin"]
SCOPES: tuple[Scope, ...] = ("heatmaps", "admin")
_PREFIX = "kr_"


class ApiKey(FileModel):
    """One key as the file keeps it: its name, scope and the hash of the token."""

    name: Annotated[str, Field(pattern=r"^[\w.-]+$")]
    """Letters, digits, '-', '_' or '.': who or what uses the key, e.g. ``cdss-prod``."""
    scope: Scope
    sha256: Annotated[str, Field(pattern="^[0-9a-f]{64}$")]
    created: str

    @property
    def id(self) -> str:
        """What jobs are owned by: stable for the token, new for a re-added name."""
        return self.sha256[:16]


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of one request (``name`` None: the service runs open)."""

    name: str | None
    scope: Scope
    key_id: str | None = None

    @property
    def admin(self) -> bool:
        return self.scope == "admin"

    def may_see(self, owner: str | None) -> bool:
        """Whether a job made by the key ``owner`` is this caller's to read or delete."""
        return self.admin or owner == self.key_id


OPEN = Caller(name=None, scope="admin")
"""Everyone, when no keys are configured: every job is everyone's."""


class _KeysFile(FileModel):
    """The file: its keys, each name once (a name is what ``revoke`` takes)."""

    entries: ClassVar[Mapping[str, str]] = {"keys": "key"}
    secret: ClassVar[frozenset[str]] = frozenset({"sha256"})

    keys: Annotated[tuple[ApiKey, ...], ARRAY]

    @model_validator(mode="after")
    def _each_name_once(self) -> Self:
        listed_once("key", (key.name for key in self.keys))
        hashes = [key.sha256 for key in self.keys]
        if len(set(hashes)) != len(hashes):  # one token would be two keys, of two scopes
            raise ValueError("two keys have the same sha256")
        return self


class KeysFileError(ValueError):
    """The keys file is not one (it may have been broken while the service ran). The
    message names the file, the key and the field, never a key's hash."""


class KeyStore:
    """API keys in a JSON file; re-read when the file changes, so revoking needs no restart.

    Args:
        path: the keys file.
        required: the file must exist (a service's keys): one gone while the service
            runs refuses every key, as a broken one does, rather than reading as a
            file with no keys. The command line that creates the file leaves it off.

    Raises:
        ValueError: the file is not a keys file (on reading it), naming the file, the key
            and the field at fault.
    """

    def __init__(self, path: str | os.PathLike[str], *, required: bool = False) -> None:
        self.path = Path(path)
        self.required = required
        self._lock = threading.Lock()
        self._seen: tuple[float, int] | None = None
        self._keys: dict[str, ApiKey] = {}

    def keys(self) -> list[ApiKey]:
        with self._lock:
            self._refresh()
            return sorted(self._keys.values(), key=lambda key: key.name)

    def find(self, token: str) -> ApiKey | None:
        """The key whose hash ``token`` has, compared in constant time."""
        digest = _digest(token)
        match = None
        for key in self.keys():
            if hmac.compare_digest(key.sha256, digest):
                match = key
        return match

    def add(self, name: str, scope: Scope) -> str:
        """Create a key named ``name``; returns the token, which is not stored anywhere.

        Raises:
            ValueError: a bad name or scope, or a key of that name exists.
        """
        token = _PREFIX + secrets.token_urlsafe(32)
        fields = {"name": name, "scope": scope, "sha256": _digest(token),
                  "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        key = ApiKey.read(fields, f"key {name!r}", ValueError)
        with self._lock:
            self._refresh()
            if name in self._keys:
                raise ValueError(f"a key named {name!r} exists; revoke it first")
            self._keys[name] = key
            self._write()
        return token

    def revoke(self, name: str) -> bool:
        """Remove the key named ``name``; ``False`` when there was none."""
        with self._lock:
            self._refresh()
            if self._keys.pop(name, None) is None:
                return False
            self._write()
            return True

    def _refresh(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._seen, self._keys = None, {}
            if self.required:
                raise KeysFileError(f"keys file {self.path} is missing: it was moved or "
                                    "deleted while the service ran") from None
            return
        if self._seen == (stat.st_mtime, stat.st_size):
            return
        try:
            document = json.loads(self.path.read_bytes())
        except (OSError, ValueError, RecursionError) as exc:
            raise KeysFileError(f"cannot read keys file {self.path}: {exc}") from None
        keys = _KeysFile.read(document, f"keys file {self.path}", KeysFileError).keys
        self._seen, self._keys = (stat.st_mtime, stat.st_size), {k.name: k for k in keys}

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps({"keys": [k.model_dump() for k in self._keys.values()]},
                                      indent=2) + "\n", encoding="utf-8")
        partial.chmod(0o600)
        os.replace(partial, self.path)
        self._seen = None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_mode(host: str, keys_file: Path | None, auth: str | None) -> str:
    """How the service will run, in one line for its start-up log.

    Raises:
        PermissionError: asked to listen beyond loopback with no keys and no
            ``KRYPTON_AUTH=none``; the message says how to add a key.
    """
    if keys_file is not None:
        return f"API keys required (keys file {keys_file})"
    if auth == "none":
        return ("open: no API keys (KRYPTON_AUTH=none; a gateway in front must "
                "authenticate callers)")
    if is_loopback(host):
        return (f"open: no API keys; anyone who can connect to {host} can use it "
                "(set KRYPTON_KEYS_FILE to require keys)")
    raise PermissionError(
        f"refusing to listen on {host} without API keys: patient images would be open to "
        "anyone who reaches this port. Add a key with `krypton keys add NAME --file "
        "keys.json` and start with KRYPTON_KEYS_FILE=keys.json, or set KRYPTON_AUTH=none "
        "when a gateway in front authenticates callers")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
