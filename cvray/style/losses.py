"""The lab's style-transfer losses, per image (d2l section 14.12), and ImageNet normalisation.

Plain PyTorch. Every loss maps a batch (B, ...) to (B,) so a batch of images can be optimised
together with each image's own loss (cvray.style.stylizer).
"""

from __future__ import annotations

import torch

from cvray.images import IMAGENET_MEAN, IMAGENET_STD

LOSS_NAMES = ("content", "style", "tv", "total")
# RGB -> YIQ (NTSC); Y is the luminance kept from the result by --original-colors.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def gram(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C) Gram matrices normalised by C*H*W (the lab's), in fp32."""
    b, c, h, w = features.shape
    flat = features.float().reshape(b, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def content_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image: (B, C, H, W) x2 -> (B,)."""
    return (y_hat.float() - y).square().mean(dim=(1, 2, 3))


def style_loss(y_hat: torch.Tensor, gram_target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of Gram matrices per image: (B, C, H, W), (C, C) -> (B,)."""
    return (gram(y_hat) - gram_target).square().mean(dim=(1, 2))


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """The lab's total variation, per image: 0.5 * (mean |dy| + mean |dx|); (B, C, H, W) -> (B,)."""
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean(dim=(1, 2, 3))
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean(dim=(1, 2, 3))
    return 0.5 * (dy + dx)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB (B, 3, H, W) -> ImageNet-normalised."""
    mean, std = _stats(images)
    return (images - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(x)
    return x * std + mean


def keep_original_colors(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Luminance-only transfer: the result's Y with the content's I and Q (YIQ); (B,3,H,W) [0,1]."""
    to_yiq = _RGB_TO_YIQ.to(result.device)
    yiq_result = torch.einsum("ij,bjhw->bihw", to_yiq, result)
    yiq_content = torch.einsum("ij,bjhw->bihw", to_yiq, content)
    mixed = torch.cat([yiq_result[:, :1], yiq_content[:, 1:]], dim=1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), mixed).clamp(0, 1)


def _stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, device=like.device, dtype=like.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=like.device, dtype=like.dtype).view(1, 3, 1, 1)
    return mean, std
