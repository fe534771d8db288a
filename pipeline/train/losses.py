"""Contrastive losses. The losses own the labels and the (learnable, bounded) temperature."""
from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.train.config import LossConfig


class ContrastiveLoss(nn.Module):
    """Weighted sum of the configured terms; ``temperature`` is learnable within its bounds.

    The temperature is min + (max - min) * sigmoid(raw): always inside the bounds, yet with a
    gradient everywhere (the reference code's hard clamp stopped it from learning).
    """

    def __init__(self, config: LossConfig):
        super().__init__()
        self.config = config
        lo, hi = config.min_temperature, config.max_temperature  # LossConfig keeps temperature inside them
        frac = (config.temperature - lo) / (hi - lo)
        self.raw_temperature = nn.Parameter(torch.tensor(math.log(frac / (1 - frac))))

    @property
    def temperature(self) -> torch.Tensor:
        lo, hi = self.config.min_temperature, self.config.max_temperature
        return lo + (hi - lo) * torch.sigmoid(self.raw_temperature)

    def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None,
                bank: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """a, b (and c): (B, d) unit vectors of the same samples; ``bank``: frozen b-side vectors (M, d) as
        further negatives of a → b (see ``info_nce_bank``). Returns each term and ``loss``."""
        cfg, terms = self.config, {}
        if cfg.infonce:
            terms["infonce"] = self.nested(lambda x, y, m: info_nce_across_workers(x, y, self.temperature) if m is None
                                           else info_nce_bank(x, y, m, self.temperature), a, b, bank)
        if cfg.align:
            terms["align"] = (a - b).pow(2).sum(dim=1).mean()
        if cfg.uniform:
            terms["uniform"] = (uniformity(a) + uniformity(b)) / 2
        if cfg.symile and c is not None:
            terms["symile"] = symile(a, b, c, self.temperature)
        weights = {"infonce": cfg.infonce, "align": cfg.align, "uniform": cfg.uniform, "symile": cfg.symile}
        terms["loss"] = sum(weights[k] * v for k, v in terms.items())
        return terms

    def nested(self, term, a: torch.Tensor, b: torch.Tensor, bank: torch.Tensor | None = None) -> torch.Tensor:
        """``term(a, b, bank)`` on the whole vectors, averaged with the same term on each ``matryoshka`` prefix
        (renormalised): the prefixes become embeddings of their own."""
        values = [term(a, b, bank)]
        for w in self.config.matryoshka:
            values.append(term(prefix(a, w), prefix(b, w), None if bank is None else prefix(bank, w)))
        return sum(values) / len(values)


def prefix(x: torch.Tensor, width: int) -> torch.Tensor:
    """The first ``width`` components of each row, renormalised to unit length."""
    return nn.functional.normalize(x[..., :width], dim=-1)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``a`` matches row i of ``b``. (B, d), (B, d) → scalar."""
    logits = a @ b.T / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.T, labels)) / 2


def info_nce_across_workers(a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``info_nce`` with every data-parallel worker's batch as negatives: this worker's rows are contrasted
    with the rows of all workers (gathered with gradients), so N workers see N x batch - 1 negatives per
    row. Averaged over workers (as DDP averages gradients) it equals ``info_nce`` on the union of the
    batches. Without a process group (one worker) it is ``info_nce``."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return info_nce(a, b, temperature)
    from torch.distributed.nn.functional import all_gather

    a_all, b_all = torch.cat(all_gather(a)), torch.cat(all_gather(b))
    labels = torch.arange(a.shape[0], device=a.device) + dist.get_rank() * a.shape[0]  # equal batches: drop_last
    return (nn.functional.cross_entropy(a @ b_all.T / temperature, labels)
            + nn.functional.cross_entropy(b @ a_all.T / temperature, labels)) / 2


def info_nce_bank(a: torch.Tensor, b: torch.Tensor, bank: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE whose a → b half contrasts each row of ``a`` with its partner in ``b`` against every
    row of ``bank`` (frozen vectors of the b side, (M, d)) as well as the batch; bank rows equal to the
    partner are not negatives. The b → a half is the batch's, as in ``info_nce``."""
    logits = a @ b.T / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    to_bank = a @ bank.T / temperature
    same = (b @ bank.T) > 1 - 1e-5  # the partner itself, or a vector identical to it (e.g. the same caption)
    to_bank = to_bank.masked_fill(same, float("-inf"))
    forward = nn.functional.cross_entropy(torch.cat([logits, to_bank], dim=1), labels)
    return (forward + nn.functional.cross_entropy(logits.T, labels)) / 2


def uniformity(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Wang & Isola (2020): log of the mean Gaussian potential between distinct rows of x (B, d)."""
    sq = torch.cdist(x, x).pow(2)
    off = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return torch.log(torch.exp(-t * sq[off]).mean())


def symile(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Symile (Saporta et al. 2024): contrast the multilinear inner product of true triples.

    For each modality in turn, its rows are swapped with the batch's others as negatives.
    """
    labels = torch.arange(a.shape[0], device=a.device)
    total = 0.0
    for x, y, z in ((a, b, c), (b, c, a), (c, a, b)):
        logits = (x * y) @ z.T / temperature   # [i, j] = sum_d x_i y_i z_j
        total = total + nn.functional.cross_entropy(logits, labels)
    return total / 3
