"""The PACS a deployment talks to, and which model explains what a PACS sends it.

A hospital's imaging AI receives studies from its PACS and stores its results
back into the same study, both over DICOMweb. A deployment names each PACS
once (a name its integrators use, the DICOMweb base URL, how to authenticate)
and says, by routes, which deployed model explains an instance a PACS pushes
to Krypton: the first route whose Modality and SOP Class match wins, and a
route that names neither matches everything.

Credentials are never written in the registry: an entry names the environment
variable that holds them, so the file can be committed and shared.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

__all__ = ["PacsServer", "StowRoute", "PACS_NAME_PATTERN"]

PACS_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
"""What a PACS may be called: it appears in request paths."""


@dataclass(frozen=True)
class PacsServer:
    """One DICOMweb server: where studies are read from and results stored."""

    name: str
    url: str
    """DICOMweb base URL, e.g. ``http://orthanc:8042/dicom-web``."""
    token_env: str | None = None
    """Environment variable holding a bearer token sent as ``Authorization: Bearer``."""
    username: str | None = None
    password_env: str | None = None
    """Environment variable holding the password for HTTP basic authentication."""
    store_results: bool = True
    """Whether the heatmaps of instances read from (or sent by) this PACS go back to it."""

    def headers(self) -> dict[str, str]:
        """The authentication headers, read from the environment now (a rotated secret is
        picked up without a restart)."""
        if self.token_env is not None:
            return {"Authorization": f"Bearer {os.environ.get(self.token_env, '')}"}
        return {}

    def basic_auth(self) -> tuple[str, str] | None:
        if self.username is None:
            return None
        return self.username, os.environ.get(self.password_env or "", "")


@dataclass(frozen=True)
class StowRoute:
    """Which model (and dataset's tuned config) explains the instances it matches."""

    model: str
    dataset: str | None = None
    modality: str | None = None
    sop_class_uid: str | None = None
    results_to: str | None = None
    """The PACS the results go to; ``None``: none (they stay in Krypton)."""
    mode: Literal["exact", "approximate"] = "exact"
    """Approximate mode needs a tuned ``dataset``."""

    def matches(self, modality: str | None, sop_class_uid: str | None) -> bool:
        return ((self.modality is None or self.modality == modality)
                and (self.sop_class_uid is None or self.sop_class_uid == sop_class_uid))
