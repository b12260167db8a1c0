"""Distillation of the previous model's answers on replayed examples: a curriculum stage that
starts from the last stage's model (train.init_from) keeps that model's answer distribution on the
earlier stages' replayed cells, adding train.distill * KL(previous || current) at the answer
position to the loss (dark experience replay, Buzzega et al. 2020, arXiv 2004.07211: replay with
the stored logits, not only the labels). The previous model's answers are computed once, before
the first step, from init_from's checkpoint (not from the current weights, so a resumed stage
distills from the same answers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from grokloop.config import RunConfig


@dataclass
class Teacher:
    idx: torch.Tensor  # sorted example ids the previous model answered (the replayed cells)
    logp: torch.Tensor  # [len(idx), d_vocab] its log-probabilities at each answer position


def replayed_ids(cfg: RunConfig, ds, train_idx: torch.Tensor) -> torch.Tensor:
    """The training examples of the mixture parts before the first trained one: the replay."""
    first = ds.stats["parts"][cfg.data.train_on[0]]["offset"]  # parts are stacked in order
    return train_idx[train_idx < first].sort().values


@torch.no_grad()
def teacher_answers(cfg: RunConfig, ds, data, device) -> Teacher:
    """init_from's model's answer log-probabilities on the replayed training examples."""
    from grokloop.model import LoopedTransformer
    from grokloop.train.loop import init_from  # the loop imports this module

    model = LoopedTransformer(cfg.model).to(device)
    init_from(model, None, cfg.train.init_from)
    model.eval()
    idx = replayed_ids(cfg, ds, data.train_idx)
    if not len(idx):
        return Teacher(idx, torch.zeros(0, cfg.model.d_vocab, device=device))
    d, n_steps = data.data, cfg.model.n_steps

    def answer(ids):  # the last step's answer logits
        return model.readout_steps(d["inputs"][ids], n_steps, positions=d["answer_pos"][ids])[-1]

    chunks = idx.split(cfg.train.eval_batch_size)
    return Teacher(idx, torch.cat([F.log_softmax(answer(c).float(), -1) for c in chunks]))


def distill_loss(model, teacher: Teacher, data, idx: torch.Tensor, n_steps: int) -> torch.Tensor:
    """KL(previous || current) at the answer position, averaged over the batch's replayed
    examples (zero when the batch has none)."""
    pos = torch.searchsorted(teacher.idx, idx).clamp(max=max(len(teacher.idx) - 1, 0))
    hit = teacher.idx[pos] == idx if len(teacher.idx) else torch.zeros_like(idx, dtype=torch.bool)
    if not hit.any():
        return torch.zeros((), device=idx.device)
    ids = idx[hit]
    logits = model.readout_steps(
        data.train_tokens[ids], n_steps, positions=data.data["answer_pos"][ids]
    )[-1]
    return F.kl_div(
        F.log_softmax(logits.float(), -1),
        teacher.logp[pos[hit]],
        log_target=True,
        reduction="batchmean",
    )
