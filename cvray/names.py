"""Names users give to what the jobs create, and secrets kept out of what the jobs write. No Ray.

Run, sweep and trial names become folder names under --storage-path. A name is refused (one-line
ConfigError, exit code 2), never silently changed: a sanitised name would put the run somewhere
the user did not ask for, and the same command must find the same folder again when it resumes.
Refused: path separators and characters Windows or object stores trip on, '.'/'..' and hidden
names, control and invisible format characters (NUL, U+202E right-to-left override, zero-width
joiners), look-alikes that Unicode normalisation turns into something else (fullwidth '．．' reads
'..'), Windows device names (con, nul, com1, ...), and names a shell or argparse misreads.

Storage URIs may carry credentials (s3://KEY:SECRET@bucket/..., ?secret_key=...): `redact` hides
them before a URI is printed or written into a run folder.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from cvray.errors import ConfigError

MAX_NAME_LENGTH = 200
"""Characters; file systems allow 255 bytes per name and a name may gain suffixes (-best)."""
HIDDEN = "***"
_FORBIDDEN = set('/\\:*?"<>|')
# Cc control, Cf format (bidi overrides, zero-width), Co private use, Cs surrogates, Cn
# unassigned, Zl/Zp line and paragraph separators: nothing a user can see or type on purpose.
_INVISIBLE = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"}
_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
_SECRET_KEYS = re.compile(r"secret|password|passwd|token|signature|sig$|credential|access_key|session", re.I)


def name_problem(name: Any) -> str | None:
    """Why `name` cannot be a folder name of ours, or None when it can."""
    if not isinstance(name, str) or not name:
        return "is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"is longer than {MAX_NAME_LENGTH} characters"
    for ch in name:
        if ch in _FORBIDDEN:
            return f"holds {ch!r}: a name is one folder, not a path"
        category = unicodedata.category(ch)
        if category in _INVISIBLE or (category == "Zs" and ch != " "):
            return f"holds the invisible or control character U+{ord(ch):04X}"
    normal = unicodedata.normalize("NFKC", name)
    if normal != name:
        return f"holds look-alike characters (it normalises to {normal!r})"
    if name in (".", ".."):
        return "is not a folder name"
    if name.startswith("."):
        return "starts with '.' (hidden; listings skip it)"
    if name.startswith("-"):
        return "starts with '-' (reads as a flag)"
    if name != name.strip() or name.endswith("."):
        return "starts or ends with a space, or ends with '.'"
    if name.split(".")[0].lower() in _DEVICES:
        return "is a device name on Windows"
    return None


def check_name(name: str, what: str = "--name") -> str:
    """`name` unchanged, or ConfigError (one line; the name shown with escapes) naming the problem."""
    problem = name_problem(name)
    if problem:
        raise ConfigError(f"{what} {name!r} {problem}; use letters, digits, '-', '_' and '.'")
    return name


def redact(uri: str) -> str:
    """`uri` with its user part (user:password, or an S3 key pair) and secret-looking query values replaced by ***.
    Local paths and URIs without credentials come back unchanged."""
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{HIDDEN}@{netloc.rpartition('@')[2]}"  # S3's user part is the key pair itself
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, HIDDEN if _SECRET_KEYS.search(k) else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"(),]+")


def redact_text(text: str) -> str:
    """A console line or message with every URI in it passed through `redact`."""
    return _URI_IN_TEXT.sub(lambda m: redact(m.group(0)), text)


def redact_values(data: Any) -> Any:
    """`data` (dicts, lists, tuples, strings) with every string passed through `redact`."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {k: redact_values(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(redact_values(v) for v in data)
    return data
