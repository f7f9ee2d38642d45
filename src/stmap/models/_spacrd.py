"""SpaCRD-style cancer tissue region detector.

Contrastive image/gene encoders, bidirectional cross-attention over each spot and its neighbours, a VAE with
class-conditional latent centres and a classifier on ``(mu, log var)``.

Knows tensors only. Each spot of a batch is a sequence of ``T`` tokens: token 0 is the spot, tokens ``1..T-1`` its
nearest neighbours (given as row indices into the per-spot inputs, so each spot is encoded once). A modality may be
missing for some spots (e.g. a section without an image): its tokens are then replaced by a learned "missing"
embedding and the spot is left out of the contrastive loss.

Differences from the published code (deliberate):

- normalisation (LayerNorm) is over the feature axis of each token, not over the neighbour axis;
- the VAE reconstructs the fused embedding as a fixed target (``detach``), so the warm-up cannot shrink the fused
  embedding to make reconstruction trivial;
- missing-modality tokens, so training can use sources without an image and a model can run on one modality.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SpaCRDNet", "spacrd_losses"]


def _mlp(d_in: int, d_hidden: int, d_out: int, dropout: float, in_dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Dropout(in_dropout),
        nn.Linear(d_in, d_hidden),
        nn.LayerNorm(d_hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(d_hidden, d_out),
    )


class SpaCRDNet(nn.Module):
    """The SpaCRD network :cite:p:`xue2026spacrd`: gene and image token encoders, cross-attention fusion, a VAE.

    Each spot is a sequence of ``n_tokens`` tokens (itself and its nearest spots) in two modalities. The gene and
    image encoders map each spot's inputs to a token (a learned "missing" token where a modality is absent);
    bidirectional multi-head cross-attention (image tokens query gene tokens and vice versa) gives centre tokens
    that are fused; a VAE on the fused embedding and a classifier on its ``(mu, log var)`` give the cancer logit.
    :func:`stmap.tl.train_ctr` trains it; :func:`spacrd_losses` are its supervised losses.

    Parameters
    ----------
    n_genes
        Gene input size (0: no gene modality).
    n_features
        Histology feature size (0: no image modality).
    dim
        Token embedding size.
    latent
        VAE latent size.
    heads
        Attention heads.
    hidden
        Hidden size of the encoders.
    dropout
        Dropout in encoders and attention.
    n_tokens
        Spot + neighbours.
    tau
        Temperature of the contrastive loss.
    input_dropout
        Dropout on the encoders' inputs (genes and features), against overfitting to the source samples.

    See Also
    --------
    :func:`stmap.models.spacrd_losses`
        Its VAE and classification losses.
    :func:`stmap.tl.train_ctr`
        Trains it on labelled sections.
    :doc:`/tutorials/ctr`
        Tutorial.

    Examples
    --------
    >>> import torch
    >>> from stmap import models
    >>> net = models.SpaCRDNet(n_genes=20, n_features=10, dim=16, latent=4, heads=2, hidden=32)
    >>> genes, feats = torch.rand(5, 20), torch.rand(5, 10)  # 5 spots
    >>> tokens = torch.tensor([[0, 1, 2], [4, 3, 2]])  # 2 sequences: a spot, then its neighbours
    >>> has = torch.ones(5, dtype=torch.bool)
    >>> out = net(genes, feats, tokens, has, has)
    >>> tuple(out["mu"].shape), tuple(out["logit"].shape)
    ((2, 4), (2,))
    """

    def __init__(
        self,
        n_genes: int,
        n_features: int,
        *,
        dim: int = 64,
        latent: int = 16,
        heads: int = 8,
        hidden: int = 128,
        dropout: float = 0.1,
        n_tokens: int = 7,
        tau: float = 0.07,
        input_dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.n_genes, self.n_features, self.tau = n_genes, n_features, tau
        self.gene_enc = _mlp(n_genes, hidden, dim, dropout, input_dropout) if n_genes > 0 else None
        self.img_enc = _mlp(n_features, hidden, dim, dropout, input_dropout) if n_features > 0 else None
        self.gene_missing = nn.Parameter(torch.zeros(dim))
        self.img_missing = nn.Parameter(torch.zeros(dim))
        self.pos = nn.Parameter(torch.zeros(2, dim))  # centre / neighbour token embedding
        self.attn_img = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)  # image queries genes
        self.attn_gene = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)  # genes query image
        self.norm_img, self.norm_gene = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fuse = nn.Sequential(nn.Linear(2 * dim, dim), nn.LayerNorm(dim), nn.GELU())
        self.mu, self.logvar = nn.Linear(dim, latent), nn.Linear(dim, latent)
        self.dec = nn.Sequential(nn.Linear(latent, dim), nn.GELU(), nn.Linear(dim, dim))
        self.centres = nn.Parameter(torch.stack([-torch.ones(latent), torch.ones(latent)]) * 0.5)
        self.cls = nn.Sequential(nn.Linear(2 * latent, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, 1))
        self.n_tokens = n_tokens

    def embed(
        self, genes: torch.Tensor | None, feats: torch.Tensor | None, has_gene: torch.Tensor, has_img: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-spot gene and image embeddings ``(U, dim)`` (learned "missing" embedding where a modality is absent)."""
        u = has_gene.shape[0]
        dim = self.gene_missing.shape[0]
        out = []
        for x, has, enc, missing in (
            (genes, has_gene, self.gene_enc, self.gene_missing),
            (feats, has_img, self.img_enc, self.img_missing),
        ):
            if enc is None or x is None:
                out.append(missing.expand(u, dim))
            else:
                out.append(torch.where(has.view(-1, 1), enc(x), missing.expand(u, dim)))
        return out[0], out[1]

    def forward(
        self,
        genes: torch.Tensor | None,
        feats: torch.Tensor | None,
        tokens: torch.Tensor,
        has_gene: torch.Tensor,
        has_img: torch.Tensor,
        *,
        sample: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Run the network on a batch of spots.

        Parameters
        ----------
        genes
            ``(U, n_genes)`` gene inputs of the ``U`` spots involved (``None`` without a gene modality). Each spot is
            encoded once, however many sequences it appears in.
        feats
            ``(U, n_features)`` histology feature inputs of the same spots (``None`` without an image modality).
        tokens
            ``(B, T)`` rows of ``genes``/``feats``: each spot of the batch followed by its neighbours.
        has_gene
            ``(U,)`` bool: whether the spot has its gene modality.
        has_img
            ``(U,)`` bool: whether the spot has its image modality.
        sample
            Draw ``z`` from the posterior (training) instead of using ``mu``.

        Returns
        -------
        ``eg``, ``ei`` (per-spot embeddings), ``fused``, ``mu``, ``logvar``, ``z``, ``recon``, ``logit``.
        """
        eg, ei = self.embed(genes, feats, has_gene, has_img)
        t = tokens.shape[1]
        pos = torch.cat([self.pos[:1], self.pos[1:].expand(t - 1, -1)])
        g, i = eg[tokens] + pos, ei[tokens] + pos
        i2 = self.norm_img(i + self.attn_img(i, g, g, need_weights=False)[0])
        g2 = self.norm_gene(g + self.attn_gene(g, i, i, need_weights=False)[0])
        fused = self.fuse(torch.cat([i2[:, 0], g2[:, 0]], dim=-1))
        mu, logvar = self.mu(fused), self.logvar(fused).clamp(-8, 8)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        recon = self.dec(z)
        logit = self.cls(torch.cat([mu, logvar], dim=-1)).squeeze(-1)
        return {"eg": eg, "ei": ei, "fused": fused, "mu": mu, "logvar": logvar, "z": z, "recon": recon, "logit": logit}


def clip_loss(zg: torch.Tensor, zi: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE between matching gene and image embeddings (CLIP)."""
    logits = zg @ zi.T / tau
    target = torch.arange(len(zg), device=zg.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def spacrd_losses(
    net: SpaCRDNet, out: dict[str, torch.Tensor], y: torch.Tensor, *, margin: float = 3.0
) -> dict[str, torch.Tensor]:
    """VAE and classification losses of :class:`~stmap.models.SpaCRDNet` for a batch :cite:p:`xue2026spacrd`.

    Parameters
    ----------
    net
        The network (for its class centres).
    out
        Output of :meth:`SpaCRDNet.forward` with ``sample=True``.
    y
        ``(B,)`` float labels, NaN for unlabelled spots (left out of KL and BCE).
    margin
        Distance below which the two class centres are pushed apart.

    Returns
    -------
    ``recon`` (MSE to the detached fused embedding), ``kl`` (to the centre of the spot's class), ``sep`` (hinge on
    the centre distance), ``bce``, and ``vae = recon + 0.5 kl + 0.1 sep``.

    See Also
    --------
    :class:`stmap.models.SpaCRDNet`
        The network.

    Examples
    --------
    >>> import torch
    >>> from stmap import models
    >>> net = models.SpaCRDNet(n_genes=20, n_features=10, dim=16, latent=4, heads=2, hidden=32)
    >>> has = torch.ones(5, dtype=torch.bool)
    >>> out = net(torch.rand(5, 20), torch.rand(5, 10), torch.tensor([[0, 1], [2, 3], [4, 0]]), has, has, sample=True)
    >>> losses = models.spacrd_losses(net, out, torch.tensor([1.0, 0.0, float("nan")]))  # the third is unlabelled
    >>> sorted(losses)
    ['bce', 'kl', 'recon', 'sep', 'vae']
    """
    recon = F.mse_loss(out["recon"], out["fused"].detach())
    lab = ~torch.isnan(y)
    if lab.any():
        c = net.centres[y[lab].long()]
        mu, lv = out["mu"][lab], out["logvar"][lab]
        kl = 0.5 * (lv.exp() + (mu - c) ** 2 - 1.0 - lv).sum(-1).mean()
        bce = F.binary_cross_entropy_with_logits(out["logit"][lab], y[lab])
    else:
        kl = bce = out["mu"].sum() * 0.0
    sep = F.relu(margin - torch.linalg.vector_norm(net.centres[1] - net.centres[0])) ** 2
    vae = recon + 0.5 * kl + 0.1 * sep
    return {"recon": recon, "kl": kl, "sep": sep, "bce": bce, "vae": vae}
