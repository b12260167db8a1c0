"""Loss on the answer token: softmax or StableMax cross-entropy, optionally in float64; and the
authors' loss on the answer and the </a> after it (train.loss_on_end_token)."""

import torch


def stablemax_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """StableMax (Prieto et al. 2025): s(x) = x + 1 for x >= 0, 1 / (1 - x) for x < 0, normalised.
    It avoids softmax collapse (float rounding making the loss exactly 0)."""
    s = torch.where(logits >= 0, logits + 1, 1 / (1 - logits.clamp(max=0)))
    return s.log() - s.sum(-1, keepdim=True).log()


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    kind: str = "softmax",
    float64: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """logits [..., d_vocab], targets [...] -> loss."""
    if float64:
        logits = logits.double()
    log_probs = stablemax_log_probs(logits) if kind == "stablemax" else logits.log_softmax(-1)
    loss = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return loss.mean() if reduction == "mean" else loss


def with_answer(
    tokens: torch.Tensor, answer_pos: torch.Tensor, answers: torch.Tensor
) -> torch.Tensor:
    """tokens [n, pos] with one more column and each answer written at answer_pos + 1 (the
    teacher-forced answer, read to predict the end token after it)."""
    out = torch.cat([tokens, tokens[:, -1:]], dim=1).clone()
    out[torch.arange(len(out), device=out.device), answer_pos + 1] = answers
    return out


def answer_and_end_loss(
    model,
    tokens,
    answer_pos,
    answers,
    end_id: int,
    n_steps: int,
    schedule=None,
    grad_last_k=None,
    kind: str = "softmax",
    float64: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' loss (GPT-2 trained on target_text = query + answer + </a>, with the query's
    labels masked): the mean cross-entropy over two tokens, the answer at answer_pos and </a> at
    answer_pos + 1, which reads the teacher-forced answer (`tokens` from `with_answer`). One
    forward pass at the final step (train.depth fixed or random); returns (loss, the share of
    the batch learning from each step), like grokloop's depth_loss.

    Evaluation stays argmax at the answer position. The authors generate greedily and compare
    the text before the first </a> (eval_qa.py), so they count an example right when the greedy
    answer is right AND the token generated after it is </a>: our accuracy equals theirs for a
    model that always ends a one-token answer with </a> (this loss teaches it that, and it is
    the same target for every example) and is an upper bound otherwise."""
    logits = model.readout_steps(
        tokens, n_steps, schedule=schedule, grad_last_k=grad_last_k, every_step=False
    )[-1]  # [batch, pos, vocab]
    rows = torch.arange(len(tokens), device=tokens.device)
    picked = torch.stack([logits[rows, answer_pos], logits[rows, answer_pos + 1]], 1)
    targets = torch.stack([answers, torch.full_like(answers, end_id)], 1)
    share = torch.zeros(n_steps, device=tokens.device)
    share[-1] = 1.0
    return cross_entropy(picked, targets, kind, float64), share
