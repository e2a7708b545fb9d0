"""How far a router trusts its predictions: support (how well the training prompts cover a prompt),
calibrated quality moved toward the prior out of distribution, and a band around it.

This file travels to the Hub next to `modeling_carrot.py` as remote code: it imports only torch,
transformers, the standard library and its flat siblings (relative imports).
"""

import torch
from torch import nn

from .configuration_carrot import CarrotConfig
from .knn_memory_carrot import top_k_mean_similarity


def interpolate_monotone(values: torch.Tensor, knots_x: torch.Tensor, knots_y: torch.Tensor) -> torch.Tensor:
    """
    Per-column piecewise-linear map: `values (batch, n_models)`, knots `(n_models, n_knots)` sorted
    along the last axis → `(batch, n_models)`; flat beyond the first and last knots.
    """
    x = values.T.contiguous().to(knots_x.dtype)  # (n_models, batch)
    n_knots = knots_x.shape[1]
    right = torch.searchsorted(knots_x, x).clamp(1, n_knots - 1)
    x0, x1 = knots_x.gather(1, right - 1), knots_x.gather(1, right)
    y0, y1 = knots_y.gather(1, right - 1), knots_y.gather(1, right)
    width = x1 - x0
    t = torch.where(width > 0, (x - x0) / width.clamp(min=1e-12), torch.ones_like(x)).clamp(0, 1)
    return (y0 + t * (y1 - y0)).T


class CarrotReliability(nn.Module):
    """
    What the router knows about how far to trust its own predictions.

    **Support.** A prompt's similarity to the training prompts is the mean cosine similarity of its
    `support_k` most similar training prompts (the kNN memory, or `support_embeddings` for routers
    without one). Its support is the fraction of the training prompts whose own leave-one-out
    similarity (to the other training prompts) is at most that: 0.02 = less similar to the training
    data than 98% of the training prompts are to each other. For prompts like the training ones it
    is about uniform on [0, 1]; a prompt is in distribution when it is above `support_threshold`.
    The reference distribution is stored, so support stays defined when a kNN memory grows.

    **Calibrated, support-aware quality.** Per candidate, a monotone piecewise-linear map
    (`calibration_x` → `calibration_y`, fitted on out-of-fold predictions at training time) turns the
    predictor's quality into a calibrated one. Out of distribution the prediction is not to be
    trusted, so it moves toward the candidate's prior quality (its mean score on the training
    data): with t = min(1, support / threshold), quality = prior + w · (calibrated − prior) and
    w = (1 − λ) · (floor + (1 − floor) · t). The floor is chosen at training time on prompts of
    tasks held out of the training data (see `carrot_hub.reliability`). λ (`config.prior_shrink`)
    moves predictions toward the prior in distribution too (support ≥ threshold: w = 1 − λ): a
    per-prompt prediction is a noisy estimate, and routing at small μ picks the candidate whose
    noise is highest; λ is chosen by out-of-fold routing AIQ on the training data (0 = none).
    The band `[quality_low, quality_high]` is quality ± (t · spread_in + (1 − t) · spread_out):
    `spread_in` is the out-of-fold calibration error in distribution, `spread_out` how far a
    held-out task's mean quality fell from the prior; it widens as support falls whatever the floor.

    **A cautious estimate out of distribution.** Held out of the training data, a task's mean
    quality lands anywhere within about ± `spread_out` of the prior (its difficulty is not in data
    from other tasks), and routing picks the candidate whose estimate is highest, so a central
    estimate over-states the chosen model's quality on the harder tasks by the full difference.
    With `pessimism` p (config `ood_pessimism`) the quality used and reported is lowered by
    p · (1 − min(1, support / s_p)) · spread_out, s_p = `ood_pessimism_support`: at support 0 and
    p = 1 it is the band's lower end; from s_p up nothing moves. The band stays centred on the
    central estimate.

    Buffers:
        reference (`(n_reference,)`): sorted leave-one-out similarities (or their quantiles).
        support_embeddings (`(n_support, hidden)`): only for routers without a kNN memory.
        calibration_x, calibration_y (`(n_models, n_knots)`): the calibration maps' knots.
        prior (`(n_models,)`): each candidate's mean training score.
        spread_in, spread_out (`(n_models,)`): half-widths of the band in and out of distribution.
    """

    def __init__(self, config: CarrotConfig, embedding_size: int):
        super().__init__()
        n_models, n_knots = config.num_candidates, max(config.calibration_knots, 2)
        self.register_buffer("reference", torch.zeros(config.support_reference_size))
        if config.support_memory_size > 0:
            self.register_buffer("support_embeddings", torch.zeros(config.support_memory_size, embedding_size))
        else:
            self.support_embeddings = None
        self.register_buffer("calibration_x", torch.linspace(0, 1, n_knots).repeat(n_models, 1))
        self.register_buffer("calibration_y", torch.linspace(0, 1, n_knots).repeat(n_models, 1))
        self.register_buffer("prior", torch.full((n_models,), 0.5))
        self.register_buffer("spread_in", torch.zeros(n_models))
        self.register_buffer("spread_out", torch.zeros(n_models))

    def support(self, embeddings: torch.Tensor, memory: torch.Tensor, k: int) -> torch.Tensor:
        """`(batch, hidden)` embeddings and the training prompts' `(n, hidden)` → support `(batch,)` in [0, 1]."""
        return self.support_from_similarity(top_k_mean_similarity(embeddings, memory, k))

    def support_from_similarity(self, similarity: torch.Tensor) -> torch.Tensor:
        """Mean similarity to the nearest training prompts `(batch,)` → support `(batch,)` in [0, 1]."""
        similarity = similarity.to(self.reference.device, self.reference.dtype)
        below = torch.searchsorted(self.reference, similarity.contiguous(), right=True)
        return below.float() / self.reference.shape[0]

    def adjust(
        self,
        quality: torch.Tensor,
        support: torch.Tensor,
        threshold: float,
        floor: float,
        prior_shrink: float = 0.0,
        pessimism: float = 0.0,
        pessimism_support: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Raw predicted quality `(batch, n_models)` and support `(batch,)` → calibrated quality moved
        toward the prior by `prior_shrink` and further as support falls (and, with `pessimism`, down
        the band), and its band: three `(batch, n_models)` tensors.
        """
        calibrated = interpolate_monotone(quality.float(), self.calibration_x, self.calibration_y)
        trust = support.float().clamp(0, 1) / threshold if threshold > 0 else torch.ones_like(support.float())
        trust = trust.clamp(max=1.0)[:, None]  # (batch, 1): 0 at support 0, 1 from the threshold up
        weight = (1.0 - prior_shrink) * (floor + (1.0 - floor) * trust)
        adjusted = torch.where(
            weight >= 1.0, calibrated, self.prior[None, :] + weight * (calibrated - self.prior[None, :])
        )
        half_width = trust * self.spread_in[None, :] + (1.0 - trust) * self.spread_out[None, :]
        low, high = (adjusted - half_width).clamp(0, 1), (adjusted + half_width).clamp(0, 1)
        if pessimism > 0:
            caution = 1.0 - (support.float().clamp(0, 1) / pessimism_support).clamp(max=1.0)[:, None]
            adjusted = (adjusted - pessimism * caution * self.spread_out[None, :]).clamp(0, 1)
        return adjusted, low, high
