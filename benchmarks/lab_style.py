"""The d2l lab's neural-style code path, kept faithful, as the baseline for benchmarks and tests.

One image at a time: features are extracted through an nn.Sequential cut at the deepest lab
index with torchvision's in-place ReLUs, the losses are the lab's (content MSE, Gram MSE
normalised by c*h*w, TV), the total is `sum(10 * styles_l + contents_l + [tv_l])`, and the
image is optimised with Adam + StepLR exactly as `train` in d2l does. Only the pre/post
processing is taken out (the caller passes normalised tensors), so timings compare the loops.
"""

from __future__ import annotations

import torch
from torch import nn

LAB_STYLE_LAYERS = [0, 5, 10, 19, 28]
LAB_CONTENT_LAYERS = [25]


def lab_net(features: nn.Sequential, style_layers=LAB_STYLE_LAYERS, content_layers=LAB_CONTENT_LAYERS):
    return nn.Sequential(*[features[i] for i in range(max(content_layers + style_layers) + 1)])


def extract_features(net, X, content_layers, style_layers):
    contents, styles = [], []
    for i in range(len(net)):
        X = net[i](X)
        if i in style_layers:
            styles.append(X)
        if i in content_layers:
            contents.append(X)
    return contents, styles


def content_loss(Y_hat, Y):
    return torch.square(Y_hat - Y.detach()).mean()


def gram(X):
    num_channels, n = X.shape[1], X.numel() // X.shape[1]
    X = X.reshape((num_channels, n))
    return torch.matmul(X, X.T) / (num_channels * n)


def style_loss(Y_hat, gram_Y):
    return torch.square(gram(Y_hat) - gram_Y.detach()).mean()


def tv_loss(Y_hat):
    return 0.5 * (torch.abs(Y_hat[:, :, 1:, :] - Y_hat[:, :, :-1, :]).mean()
                  + torch.abs(Y_hat[:, :, :, 1:] - Y_hat[:, :, :, :-1]).mean())


def compute_loss(X, contents_Y_hat, styles_Y_hat, contents_Y, styles_Y_gram,
                 content_weight=1, style_weight=1e3, tv_weight=10):
    contents_l = [content_loss(Y_hat, Y) * content_weight
                  for Y_hat, Y in zip(contents_Y_hat, contents_Y)]
    styles_l = [style_loss(Y_hat, Y) * style_weight for Y_hat, Y in zip(styles_Y_hat, styles_Y_gram)]
    tv_l = tv_loss(X) * tv_weight
    l = sum(10 * styles_l + contents_l + [tv_l])  # noqa: E741 - the lab's names
    return contents_l, styles_l, tv_l, l


class SynthesizedImage(nn.Module):
    def __init__(self, img_shape):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(*img_shape))

    def forward(self):
        return self.weight


def lab_stylize(net, content_X, style_X, *, lr=0.3, num_epochs=500, lr_decay_epoch=50,
                content_weight=1, style_weight=1e3, tv_weight=10,
                content_layers=LAB_CONTENT_LAYERS, style_layers=LAB_STYLE_LAYERS):
    """d2l's get_contents + get_styles + train for one normalised (1, 3, H, W) content image.

    Returns (the optimised normalised image, [content, style, tv] every 10 epochs as the lab
    logs them: weighted, the style sum without the x10 repetition). Note the lab never freezes
    the VGG, so its backward also computes (unused) weight gradients unless the caller sets
    requires_grad_(False) on `net`.
    """
    contents_Y, _ = extract_features(net, content_X, content_layers, style_layers)
    _, styles_Y = extract_features(net, style_X, content_layers, style_layers)
    gen_img = SynthesizedImage(content_X.shape).to(content_X.device)
    gen_img.weight.data.copy_(content_X.data)
    trainer = torch.optim.Adam(gen_img.parameters(), lr=lr)
    styles_Y_gram = [gram(Y) for Y in styles_Y]
    X = gen_img()
    scheduler = torch.optim.lr_scheduler.StepLR(trainer, lr_decay_epoch, 0.8)
    log = []
    for _epoch in range(num_epochs):
        trainer.zero_grad()
        contents_Y_hat, styles_Y_hat = extract_features(net, X, content_layers, style_layers)
        contents_l, styles_l, tv_l, l = compute_loss(  # noqa: E741
            X, contents_Y_hat, styles_Y_hat, contents_Y, styles_Y_gram,
            content_weight, style_weight, tv_weight)
        l.backward()
        trainer.step()
        scheduler.step()
        if (_epoch + 1) % 10 == 0:  # the lab's animator logs every 10 epochs
            log.append([float(sum(contents_l).detach()), float(sum(styles_l).detach()), float(tv_l.detach())])
    return X.detach(), log
