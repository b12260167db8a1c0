"""Loss on the answer token: softmax or StableMax cross-entropy, optionally in float64."""
import torch


def stablemax_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """StableMax (Prieto et al. 2025): s(x) = x + 1 for x >= 0, 1 / (1 - x) for x < 0, normalised.
    It avoids softmax collapse (float rounding making the loss exactly 0)."""
    s = torch.where(logits >= 0, logits + 1, 1 / (1 - logits.clamp(max=0)))
    return s.log() - s.sum(-1, keepdim=True).log()


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, kind: str = "softmax",
                  float64: bool = False, reduction: str = "mean") -> torch.Tensor:
    """logits [..., d_vocab], targets [...] -> loss."""
    if float64:
        logits = logits.double()
    log_probs = stablemax_log_probs(logits) if kind == "stablemax" else logits.log_softmax(-1)
    loss = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return loss.mean() if reduction == "mean" else loss
