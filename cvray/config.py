"""What every job config shares: a JSON round trip. The configs themselves (one frozen dataclass
per job, defaults = the d2l lab's numbers) live with their workload: cvray.classification.config
and cvray.style.config.

Configs are plain data: jobs/ builds them from argparse, the library reads them, and
`to_dict()` / `from_dict()` round-trip them through JSON (run folders, checkpoints, Ray).
"""

from __future__ import annotations

import dataclasses
from typing import Any

PRECISIONS = ("bf16", "fp32")


def _tuple_fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if str(f.type).startswith("tuple")}


class JsonConfig:
    """Mixin: JSON round trip that keeps tuples as tuples (JSON only has lists)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        tuples = _tuple_fields(cls)
        kwargs = {}
        for key, value in data.items():
            if key not in names:
                continue  # written by a newer or older cvray: ignore, defaults fill the rest
            kwargs[key] = tuple(value) if key in tuples and value is not None else value
        return cls(**kwargs)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)
