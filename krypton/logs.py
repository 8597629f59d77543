"""Logging that never writes patient data, for every ``krypton`` process.

A DICOM header holds the patient's name, birth date and more, and the
libraries that read it quote its values when they complain: pydicom warns
``Invalid value for VR DA: '1999-13-45'``, highdicom raises ``Unable to
convert '1999-13-45'``. So what reaches a log is cut at two places:

- records of the DICOM libraries (``pydicom``, ``highdicom``) and Python
  warnings (which those libraries also raise) keep their level and origin,
  and their message is withheld;
- an exception raised where image bytes or headers are read (the DICOM and
  image libraries, Krypton's decoding and DICOM rendering) is written as its
  type and its stack frames (file, line, function), without its message;
  any other keeps its message (a checkpoint that does not fit, a missing
  CUDA device), which an operator needs.

Krypton's own messages name jobs, models and sizes, never a header value or
image bytes; :func:`configure_logging` installs both cuts on the one handler
every record goes through. A third keeps the access log's paths and drops
the values of their query strings: Krypton reads no secret from a URL, but a
client may put one there (``?api_key=...``).
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from types import TracebackType

__all__ = ["SafeFormatter", "WithholdQueryValues", "WithholdQuoting", "configure_logging"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

QUOTING_LOGGERS = ("pydicom", "highdicom", "py.warnings", "dicomweb_client", "urllib3")
"""Loggers whose messages may quote a header value, or a study's UIDs (which name it: the
DICOMweb client's, and the HTTP library's URLs at DEBUG)."""

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class WithholdQuoting(logging.Filter):
    """Replace the message of a record from a library that may quote header values."""

    def filter(self, record: logging.LogRecord) -> bool:
        if any(record.name == name or record.name.startswith(f"{name}.")
               for name in QUOTING_LOGGERS):
            record.msg = (f"{record.levelname.lower()} from {record.name} (message withheld: "
                          "it may quote an image's header)")
            record.args = None
        return True


class WithholdQueryValues(logging.Filter):
    """The access log's request target with each query value replaced by ``*``, and any
    part of the query that is not a plain ``name=value`` replaced whole."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access records: (client, method, target, HTTP version, status).
        if (record.name == "uvicorn.access" and isinstance(record.args, tuple)
                and len(record.args) > 2 and "?" in str(record.args[2])):
            path, _, query = str(record.args[2]).partition("?")
            record.args = (*record.args[:2], f"{path}?{_names_only(query)}",
                           *record.args[3:])
        return True


_QUERY_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
"""A name kept in the log: short, as every query name of the API is; a key is longer."""


def _names_only(query: str) -> str:
    fields = (field.partition("=") for field in query.split("&"))
    return "&".join(f"{name}=*" if sign and _QUERY_NAME.fullmatch(name) else "*"
                    for name, sign, _ in fields)


_READS_IMAGES = re.compile(r"[/\\](pydicom|highdicom|PIL|dicomweb_client|requests)[/\\]"
                           r"|[/\\]models[/\\](dicom|images)\.py$|[/\\]render[/\\]dicom\.py$")
"""Where an exception's message may quote an image's header, or a PACS URL naming a study:
frames in these files."""


class SafeFormatter(logging.Formatter):
    """Exceptions with their stack frames; the message withheld where it may quote an
    image's header."""

    def formatException(self, ei: ExcInfo | tuple[None, None, None]) -> str:  # noqa: N802
        _, exc, _ = ei
        return "\n".join(_chain(exc)) if exc is not None else ""

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - frames only: safe
        return stack_info


def _chain(exc: BaseException) -> list[str]:
    """The exception, and what caused it, as type and frames, outermost last (as Python)."""
    lines: list[str] = []
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None:
        lines += [*_chain(cause), "", "The above exception led to:", ""]
    lines.append("Traceback (most recent call last):")
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in frames:
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if any(_READS_IMAGES.search(frame.filename) for frame in frames):
        lines.append(f"{name} (message withheld: raised reading an image, it may quote "
                     "patient data)")
    else:
        lines.append(f"{name}: {exc}")
    return lines


def configure_logging(level: str | int) -> None:
    """Log at ``level`` to stderr through the two cuts; Python warnings included."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter(FORMAT))
    handler.addFilter(WithholdQuoting())
    handler.addFilter(WithholdQueryValues())
    logging.basicConfig(level=level.upper() if isinstance(level, str) else level,
                        handlers=[handler], force=True)
    logging.captureWarnings(True)
    # highdicom narrates each object it builds at INFO, every line withheld above: noise.
    logging.getLogger("highdicom").setLevel(max(logging.WARNING, logging.root.level))
