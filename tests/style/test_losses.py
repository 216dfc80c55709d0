"""The lab's style-transfer losses, per image, on tiny tensors."""

from __future__ import annotations

import pytest
import torch

from benchmarks import lab_style
from cvray.style.losses import content_loss, gram, style_loss, tv_loss


def test_losses_against_hand_computed_values():
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 1, 2)  # C=2, H=1, W=2
    expected_gram = torch.tensor([[5.0, 11.0], [11.0, 25.0]]) / 4  # F F^T / (C*H*W)
    torch.testing.assert_close(gram(f)[0], expected_gram)
    torch.testing.assert_close(gram(f)[0], lab_style.gram(f))
    target = torch.zeros(2, 2)
    assert style_loss(f, target).item() == pytest.approx((25 + 121 + 121 + 625) / 16 / 4)
    y = torch.tensor([[0.0, 2.0], [3.0, 0.0]]).reshape(1, 2, 1, 2)
    assert content_loss(f, y).item() == pytest.approx((1 + 0 + 0 + 16) / 4)
    img = torch.tensor([[0.0, 1.0], [3.0, 5.0]]).reshape(1, 1, 2, 2)
    # dy: |3-0|, |5-1| -> mean 3.5; dx: |1-0|, |5-3| -> mean 1.5; 0.5 * (3.5 + 1.5)
    assert tv_loss(img).item() == pytest.approx(2.5)
    assert tv_loss(img).item() == pytest.approx(lab_style.tv_loss(img).item())


def test_losses_are_per_image():
    a, b = torch.rand(1, 4, 5, 6), torch.rand(1, 4, 5, 6)
    target = torch.rand(4, 4)
    both = torch.cat([a, b])
    torch.testing.assert_close(tv_loss(both), torch.cat([tv_loss(a), tv_loss(b)]))
    torch.testing.assert_close(style_loss(both, target),
                               torch.cat([style_loss(a, target), style_loss(b, target)]))
    torch.testing.assert_close(content_loss(both, both.flip(0)),
                               torch.cat([content_loss(a, b), content_loss(b, a)]))
    assert style_loss(a, target).item() == pytest.approx(lab_style.style_loss(a, target).item())


