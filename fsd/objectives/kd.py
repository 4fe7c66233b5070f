"""Hard-label loss and Hinton knowledge distillation (VKD, docs/method.md §2, Eq. 1-2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_loss(s_logits: torch.Tensor, labels: torch.Tensor, regression: bool = False) -> torch.Tensor:
    """Cross-entropy to the gold class, or MSE to the gold score for regression (STS-B).

    Args:
        s_logits: `[n, C]` (or `[n, 1]` for regression).
        labels: `[n]` class ids, or `[n]` float targets.
    """
    if regression:
        return F.mse_loss(s_logits.float().view(-1), labels.float().view(-1))
    return F.cross_entropy(s_logits.float(), labels)


def kd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float,
            regression: bool = False) -> torch.Tensor:
    """`T^2 * KL(softmax(t/T) || softmax(s/T))`, summed over classes and averaged over the batch.

    For regression the reference code's softmax over one logit is identically zero (docs/method.md §2); this
    project uses `MSE(s, t)` instead, and `temperature` plays no part.
    """
    if regression:
        return F.mse_loss(s_logits.float().view(-1), t_logits.float().view(-1))
    log_p_s = F.log_softmax(s_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(t_logits.float() / temperature, dim=-1)
    return temperature**2 * F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


def vkd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, labels: torch.Tensor, alpha: float,
             temperature: float, regression: bool = False) -> torch.Tensor:
    """`L_VKD = alpha * CE(s, y) + (1 - alpha) * T^2 * KL(p_T/T || p_S/T)` (Eq. 1-2).

    Args:
        s_logits: student logits `[n, C]`; t_logits: teacher logits `[n, C]` (no gradient is taken
            through them); labels: `[n]`.
        alpha: weight of the hard-label term in [0, 1]; temperature: T > 0.
        regression: STS-B: MSE to the label and MSE to the teacher's output.
    """
    hard = label_loss(s_logits, labels, regression)
    soft = kd_loss(s_logits, t_logits.detach(), temperature, regression)
    return alpha * hard + (1 - alpha) * soft
