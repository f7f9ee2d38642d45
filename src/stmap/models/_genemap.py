"""Fully convolutional network that reconstructs an H&E tile and adds one output channel per gene.

Knows tensors, not SpatialData. The network is a small U-Net: any input size whose sides are multiples of
``2 ** depth`` works, so it trains on tiles and runs on whole images (or on overlapping tiles of a huge one).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["GeneMapNet", "ssim_loss", "spot_means"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.SiLU(),
    )


class GeneMapNet(nn.Module):
    """U-Net :cite:p:`ronneberger2015unet` with an image head (RGB in ``[0, 1]``) and a gene head (a channel per gene).

    There is no normalisation layer: batch or group statistics would make a pixel's output depend on the rest of
    the tile, and a tiled pass would then differ from a whole-image pass. Every output pixel depends only on a
    window of :attr:`receptive_radius` pixels around it.

    Parameters
    ----------
    n_genes
        Gene output channels.
    width
        Channels of the first level (doubled at each level down).
    depth
        Number of 2x down-samplings; input sides must be multiples of ``2 ** depth``.
    n_priors
        Number of prior estimates in the input. The input carries, after the 3 RGB channels, ``n_priors`` blocks of
        one channel per gene (estimates of the standardised expression at each pixel, e.g. interpolated from nearby
        measured spots, or regressed on local histology features), then (if ``n_priors > 0``) one channel saying
        how far the nearest measured spot is. The gene head adds the priors, each scaled by a learnt per-gene gain
        (initially ``1 / n_priors``), to its own output: the network learns how to weigh them and the departure
        from them that the histology shows.

    See Also
    --------
    :func:`stmap.tl.train_gene_maps`
        Trains it on a section's H&E and spots.
    :func:`stmap.tl.predict_maps`
        Runs it over a whole image in tiles.
    :doc:`/tutorials/gene_maps`
        Tutorial.

    Examples
    --------
    >>> import torch
    >>> from stmap import models
    >>> net = models.GeneMapNet(n_genes=5, width=4, depth=2)
    >>> image, genes = net(torch.rand(1, 3, 32, 32))  # sides are multiples of 2 ** depth
    >>> tuple(image.shape), tuple(genes.shape)
    ((1, 3, 32, 32), (1, 5, 32, 32))
    """

    def __init__(self, n_genes: int, *, width: int = 16, depth: int = 3, n_priors: int = 0) -> None:
        super().__init__()
        self.n_genes, self.width, self.depth, self.n_priors = int(n_genes), int(width), int(depth), int(n_priors)
        chans = [width * 2**i for i in range(depth + 1)]
        self.in_channels = 3 + (self.n_priors * self.n_genes + 1 if self.n_priors else 0)
        self.prior_gain = (
            nn.Parameter(torch.full((self.n_priors, self.n_genes), 1.0 / self.n_priors)) if self.n_priors else None
        )
        self.down = nn.ModuleList(
            [_block(self.in_channels, chans[0])] + [_block(chans[i], chans[i + 1]) for i in range(depth)]
        )
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth))]
        )
        self.dec = nn.ModuleList([_block(2 * chans[i], chans[i]) for i in reversed(range(depth))])
        self.image_head = nn.Conv2d(chans[0], 3, 1)
        self.gene_head = nn.Sequential(
            nn.Conv2d(chans[0], chans[0], 3, padding=1), nn.SiLU(), nn.Conv2d(chans[0], n_genes, 1)
        )

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this."""
        return 2**self.depth

    @property
    def receptive_radius(self) -> int:
        """Half-width in pixels of the region that can influence one output pixel (an upper bound)."""
        r, step = 0, 1
        for _ in range(self.depth):
            r += 2 * step  # two 3x3 convolutions at this level
            step *= 2
        r += 2 * step  # bottleneck
        for _ in range(self.depth):
            step //= 2
            r += step + 2 * step  # transposed conv + two convolutions
        return r + 2  # gene head 3x3 + margin

    def config(self) -> dict[str, Any]:
        """Constructor arguments (for saving)."""
        return {"n_genes": self.n_genes, "width": self.width, "depth": self.depth, "n_priors": self.n_priors}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, C, H, W)`` -> ``(image (B, 3, H, W) in [0, 1], genes (B, G, H, W))``.

        ``C`` is ``in_channels``: RGB in ``[0, 1]``, then the ``n_priors`` per-gene prior blocks and the
        distance channel.
        """
        skips = []
        h = x
        for i, block in enumerate(self.down):
            if i > 0:
                h = F.max_pool2d(h, 2)
            h = block(h)
            skips.append(h)
        h = skips.pop()
        for up, dec in zip(self.up, self.dec, strict=True):
            h = dec(torch.cat([up(h), skips.pop()], dim=1))
        genes = self.gene_head(h)
        g = self.n_genes
        if self.prior_gain is not None:
            for k in range(self.n_priors):
                genes = genes + self.prior_gain[k][None, :, None, None] * x[:, 3 + k * g : 3 + (k + 1) * g]
        return torch.sigmoid(self.image_head(h)), genes


def _gaussian_window(size: int, sigma: float, channels: int, device: Any, dtype: Any) -> torch.Tensor:
    ax = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_loss(a: torch.Tensor, b: torch.Tensor, *, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """``1 - SSIM`` :cite:p:`wang2004ssim` (Gaussian window, data range 1) averaged over batch, channels and pixels.

    Parameters
    ----------
    a
        ``(B, C, H, W)`` images with values in ``[0, 1]``.
    b
        ``(B, C, H, W)`` images to compare with ``a``.
    size
        Side of the Gaussian window in pixels.
    sigma
        Standard deviation of the Gaussian window in pixels.

    Returns
    -------
    A scalar tensor: 0 for identical images, differentiable in ``a`` and ``b``.

    See Also
    --------
    :func:`stmap.metrics.ssim`
        The same measure on NumPy arrays.
    :class:`stmap.models.GeneMapNet`
        Whose image head is trained with this loss.

    Examples
    --------
    >>> import torch
    >>> from stmap import models
    >>> a = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> float(models.ssim_loss(a, a))
    0.0
    >>> float(models.ssim_loss(a, 1 - a)) > 1  # inverted contrast: negative SSIM
    True
    """
    c = a.shape[1]
    w = _gaussian_window(size, sigma, c, a.device, a.dtype)
    pad = size // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad,) * 4, mode="reflect"), w, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return 1 - s.mean()


def spot_means(genes: torch.Tensor, batch: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Mean of the gene channels over each spot's pixels.

    Parameters
    ----------
    genes
        ``(B, G, H, W)`` gene channels.
    batch
        ``(S,)`` tile index of each spot.
    pixels
        ``(S, K)`` flat pixel indices (``y * W + x``) of each spot's disc inside its tile (every spot has the same
        number ``K`` of pixels: the disc stencil).

    Returns
    -------
    ``(S, G)`` spot averages.

    See Also
    --------
    :func:`stmap.tl.disc_means`
        The same average over discs on whole (NumPy or dask) images.

    Examples
    --------
    >>> import torch
    >>> from stmap import models
    >>> genes = torch.arange(32.0).reshape(1, 2, 4, 4)  # one tile, 2 genes, 4 x 4 pixels
    >>> models.spot_means(genes, torch.tensor([0, 0]), torch.tensor([[0, 1], [14, 15]]))  # two spots of 2 pixels
    tensor([[ 0.5000, 16.5000],
            [14.5000, 30.5000]])
    """
    b, g, h, w = genes.shape
    flat = genes.permute(0, 2, 3, 1).reshape(b * h * w, g)
    idx = (batch[:, None] * (h * w) + pixels).reshape(-1)
    return flat.index_select(0, idx).reshape(pixels.shape[0], pixels.shape[1], g).mean(dim=1)
