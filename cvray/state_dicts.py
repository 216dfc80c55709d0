"""Reading weight files a user hands over: PyTorch state dicts, local or from object stores,
always with `torch.load(..., weights_only=True)` (no pickled code runs). No Ray."""

from __future__ import annotations

import io

import torch

from cvray import storage
from cvray.errors import DataError, first_line


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a state dict file: plain, or wrapped as {"state_dict": ...} / {"model": ...}
    (checkpoints, cvray's model.pt), with DDP's "module." prefixes removed. DataError (one line)
    for a missing, unreadable or non-state-dict file."""
    data = storage.read_bytes(path)
    try:
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors have many types
        raise DataError(f"{path}: not a readable PyTorch state dict ({first_line(exc)})") from None
    for key in ("state_dict", "model"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise DataError(f"{path}: expected a state dict of tensors, got {type(raw).__name__}")
    return {key.removeprefix("module."): value for key, value in raw.items()}
