"""Puts the repository root on sys.path, so every `python benchmarks/NAME.py` imports `cvray` (and
`benchmarks.*`) from this checkout, installed or not: a GPU host without Ray (or pip) runs the
scripts as they are. Each script imports it first: `import _bootstrap  # noqa: F401`.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
