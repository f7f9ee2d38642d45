"""ASIGN-style 3D imputation network: histology tokens, graph attention, a level transformer, a learnt mix.

The network's prediction is mixed per gene with the expression propagated over the 3D spot graph.

Knows tensors, not SpatialData. Node inputs are ``L`` feature blocks (one per patch scale: spot, region, global
context) plus one expression token (the label-propagated expression of the node, standardised per gene). Per node:

1. every block is encoded to a token of width ``hidden``; a spot without an image gets a learnt "no image" token;
2. cross-attention: each level token attends to all tokens of the node (levels + expression), a real softmax over
   ``L + 1`` keys (a single key would make the attention weights constant and ignore the query);
3. graph attention per level (:class:`torch_geometric.nn.TransformerConv` with the edge type and weight as edge
   features) over the 3D graph, residual;
4. a transformer layer across the level tokens (nodes stay in the batch dimension; tokens are never reshaped across
   nodes), mean-pooled, then a linear head to the genes; every level also has its own head (auxiliary losses);
5. output = per-gene softmax mix of three sources: the propagated expression, a linear histology prior (a
   cross-fitted ridge regression of expression on the node's features, computed outside) and the network. A source
   not available at a node (no propagation, no image) gets weight 0 there and the others are renormalised.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ASIGNNet", "impute_loss"]


class ASIGNNet(nn.Module):
    """The ASIGN imputation network :cite:p:`zhu2024asign`: histology tokens, graph attention, a learnt mix.

    Node inputs are ``L`` feature blocks (one per patch scale: spot, region, global context) plus one expression
    token (the label-propagated expression of the node, standardised per gene). Every block is encoded to a token
    (a learnt "no image" token for a spot without an image); each level token attends to all tokens of the node;
    graph attention per level runs over the 3D spot graph (edge type and weight as edge features); a transformer
    layer across the level tokens is mean-pooled into a linear head to the genes (every level also has its own
    head, for auxiliary losses). The output is a per-gene softmax mix of three sources: the propagated expression,
    a linear histology prior (computed outside) and the network; a source not available at a node gets weight 0
    there.

    Parameters
    ----------
    level_dims
        Feature width of each level (patch scale); ``[]`` for an expression + graph only model.
    n_genes
        Output genes.
    hidden
        Token width.
    heads
        Attention heads (``hidden`` must be divisible by it).
    n_edge_types
        Edge types (e.g. overlap, similarity, spatial); edge features are their one-hot code plus the weight.
    dropout
        Dropout in the attention layers and before the heads.
    use_expression
        Give the network the propagated expression as an extra token (otherwise it sees histology and the graph
        only, and expression enters through the mix alone).

    See Also
    --------
    :func:`stmap.models.impute_loss`
        Its training loss.
    :func:`stmap.tl.train_impute_3d`
        Trains it on a stack of sections.
    :doc:`/tutorials/impute3d`
        Tutorial.

    Examples
    --------
    Six spots with one histology block of 8 features, five genes, three pairs of spots joined by edges of type 0:

    >>> import torch
    >>> from stmap import models
    >>> net = models.ASIGNNet([8], n_genes=5, hidden=16, heads=4)
    >>> edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 0, 3, 2, 5, 4]])
    >>> edge_attr = torch.tensor([[1.0, 0.0, 0.0, 1.0]] * 6)  # one-hot type, then the weight
    >>> has_image = torch.ones(6, dtype=torch.bool)
    >>> mixed, network, per_level = net([torch.rand(6, 8)], has_image, torch.rand(6, 5), edge_index, edge_attr)
    >>> tuple(mixed.shape), len(per_level)
    ((6, 5), 1)
    """

    def __init__(
        self,
        level_dims: list[int],
        n_genes: int,
        *,
        hidden: int = 64,
        heads: int = 4,
        n_edge_types: int = 3,
        dropout: float = 0.1,
        use_expression: bool = True,
    ):
        super().__init__()
        self.use_expression = bool(use_expression)
        from torch_geometric.nn import TransformerConv

        self.level_dims, self.n_genes, self.hidden = list(level_dims), int(n_genes), int(hidden)
        self.n_edge_types = int(n_edge_types)
        n_levels = max(len(self.level_dims), 1)
        self.encoders = nn.ModuleList(
            [nn.Sequential(nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.GELU()) for d in self.level_dims]
        )
        self.no_image = nn.Parameter(torch.zeros(n_levels, hidden))
        self.expr = nn.Sequential(nn.Linear(n_genes, hidden), nn.LayerNorm(hidden), nn.GELU())
        self.cross = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(hidden)
        self.gat = nn.ModuleList(
            [
                TransformerConv(hidden, hidden // heads, heads=heads, edge_dim=n_edge_types + 1, dropout=dropout)
                for _ in range(n_levels)
            ]
        )
        self.gat_norm = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(n_levels)])
        self.levels = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=2 * hidden, dropout=dropout, batch_first=True, norm_first=True
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_genes)
        self.level_heads = nn.ModuleList([nn.Linear(hidden, n_genes) for _ in range(n_levels)])
        self.mix_logit = nn.Parameter(torch.zeros(3, n_genes))  # sources: propagated, histology prior, network

    def forward(
        self,
        features: list[torch.Tensor],
        has_image: torch.Tensor,
        propagated: torch.Tensor,
        edge_index: torch.Tensor,
        edge_attr: torch.Tensor,
        prior: torch.Tensor | None = None,
        available: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Predict standardised expression.

        Parameters
        ----------
        features
            One ``(n, d_l)`` tensor per level (rows of spots without an image are ignored).
        has_image
            ``(n,)`` bool.
        propagated
            ``(n, n_genes)`` label-propagated expression (standardised).
        edge_index
            ``(2, E)`` edges of the graph (source and target node of each).
        edge_attr
            ``(E, n_edge_types + 1)`` edge features: the one-hot edge type, then the edge weight.
        prior
            ``(n, n_genes)`` linear histology prior (standardised); ``None``: zeros, unavailable.
        available
            ``(n, 3)`` bool: which sources (propagated, prior, network) exist at each node (default: all; the prior
            only where ``prior`` is given).

        Returns
        -------
        ``(mixed, network, per_level)``: the final prediction, the network's alone and each level head's.
        """
        lv = self.tokens(features, has_image, propagated)
        return self.finish(self.convolve(lv, edge_index, edge_attr), propagated, prior, available)

    def tokens(self, features: list[torch.Tensor], has_image: torch.Tensor, propagated: torch.Tensor) -> torch.Tensor:
        """Steps 1-2, per node: ``(n, L, h)`` level tokens after the cross-attention (arguments as :meth:`forward`)."""
        n = propagated.shape[0]
        m = has_image[:, None].to(propagated.dtype)
        if self.level_dims:
            toks = [m * enc(f) + (1 - m) * self.no_image[i] for i, (enc, f) in enumerate(zip(self.encoders, features))]
        else:
            toks = [self.no_image[0].expand(n, -1)]
        lv = torch.stack(toks, 1)  # (n, L, h)
        keys = torch.cat([lv, self.expr(propagated)[:, None]], 1) if self.use_expression else lv  # (n, L (+1), h)
        att, _ = self.cross(lv, keys, keys, need_weights=False)
        return self.cross_norm(lv + att)

    def convolve(
        self, lv: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Step 3: graph attention per level, residual; ``(t, L, h)`` for the nodes ``targets`` of ``lv``.

        ``targets=None``: every node (``edge_index`` indexes ``lv`` at both ends). Otherwise the sources of
        ``edge_index`` index ``lv`` and its targets index ``targets`` (a batch of nodes with their neighbours).
        """
        out = []
        for i, (conv, norm) in enumerate(zip(self.gat, self.gat_norm)):
            h = lv[:, i]
            if targets is None:
                out.append(norm(h + self.drop(conv(h, edge_index, edge_attr))))
            else:
                ht = h[targets]
                out.append(norm(ht + self.drop(conv((h, ht), edge_index, edge_attr))))
        return torch.stack(out, 1)

    def finish(
        self,
        lv: torch.Tensor,
        propagated: torch.Tensor,
        prior: torch.Tensor | None = None,
        available: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Steps 4-5, per node: the level transformer, the heads and the mix; returns as :meth:`forward`."""
        lv = self.levels(lv)  # (n, L, h): attention across levels, per node
        net = self.head(self.drop(lv.mean(1)))
        per_level = [hd(lv[:, i]) for i, hd in enumerate(self.level_heads)]
        return self.mix(propagated, prior, net, available), net, per_level

    def mix(
        self,
        propagated: torch.Tensor,
        prior: torch.Tensor | None,
        net: torch.Tensor,
        available: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-gene softmax mix of the sources (unavailable ones get weight 0 at their nodes)."""
        if prior is None:
            prior = torch.zeros_like(net)
        if available is None:
            available = torch.ones(net.shape[0], 3, dtype=torch.bool, device=net.device)
        logits = self.mix_logit[None] + torch.where(available[:, :, None], 0.0, -1e4)  # (n, 3, g)
        w = torch.softmax(logits, 1)
        return w[:, 0] * propagated + w[:, 1] * prior + w[:, 2] * net

    def mixing_weights(self) -> torch.Tensor:
        """``(3, n_genes)`` per-gene weights of the propagated expression, the histology prior and the network."""
        return torch.softmax(self.mix_logit.detach(), 0)


def impute_loss(pred: torch.Tensor, target: torch.Tensor, *, mse_weight: float = 0.75) -> torch.Tensor:
    """``mse_weight * MSE + (1 - mse_weight) * (1 - PCC)``, PCC per gene across the rows, averaged.

    The training loss of :class:`ASIGNNet` (ASIGN's :cite:p:`zhu2024asign`).

    Parameters
    ----------
    pred
        ``(n, n_genes)`` predictions.
    target
        ``(n, n_genes)`` targets.
    mse_weight
        Weight of the mean squared error; ``1 - mse_weight`` weighs ``1 - PCC``.

    Returns
    -------
    A scalar tensor, differentiable in ``pred``.

    See Also
    --------
    :class:`stmap.models.ASIGNNet`
        The network trained with it.

    Examples
    --------
    >>> import torch
    >>> from stmap import models
    >>> target = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 7.0]])
    >>> float(models.impute_loss(target, target))
    0.0
    >>> round(float(models.impute_loss(target + 1, target)), 4)  # shifted: MSE 1, PCC 1
    0.75
    """
    mse = ((pred - target) ** 2).mean()
    pc = pred - pred.mean(0)
    tc = target - target.mean(0)
    r = (pc * tc).sum(0) / (pc.norm(dim=0) * tc.norm(dim=0)).clamp_min(1e-8)
    return mse_weight * mse + (1 - mse_weight) * (1 - r.mean())
