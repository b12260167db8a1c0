"""What a training run holds between steps: the data resident on the device, and the state a step
changes and a checkpoint restores (model, optimizer, RNG, the shuffle's order and cursor, the
Grokfast EMA, the depth objective's tally)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from grokloop.checkpoint import optimizer_from_tensors, optimizer_to_tensors
from grokloop.evaluate import answer_prefix
from grokloop.losses import with_answer
from grokloop.train.distill import Teacher


@dataclass
class ResidentData:
    """The dataset as tensors on the device for the whole run, and the evaluated splits."""

    data: dict[str, torch.Tensor]  # inputs [N, n_ctx], answer_pos, answers, hops [N]
    train_idx: torch.Tensor  # [n_train] example ids of the training split
    eval_idx: dict[str, torch.Tensor]  # split -> example ids
    train_tokens: torch.Tensor  # inputs cut after the last answer (+ answer, end loss)
    batch: int  # examples per step
    end_id: int | None  # the </a> token when the loss also reads it
    eval_cache: dict = field(default_factory=dict)  # each split's evaluation batches, built once
    teacher: Teacher | None = None  # train.distill: the previous model's answers on replayed cells

    @classmethod
    def build(
        cls,
        ds,
        eval_names: list[str],
        batch_size: int | None,
        end_token: bool,
        device: torch.device,
    ) -> "ResidentData":
        data = {
            k: torch.as_tensor(getattr(ds, k), device=device)
            for k in ("inputs", "answer_pos", "answers", "hops")
        }
        train_idx = torch.as_tensor(ds.splits["train"], device=device)
        eval_idx = {s: torch.as_tensor(ds.splits[s], device=device) for s in eval_names}
        n_train = len(train_idx)
        tokens = answer_prefix(data["inputs"], data["answer_pos"], train_idx)
        end_id = ds.vocab.id("</a>") if end_token else None
        if end_id is not None:  # the authors' loss: answer, then </a> (grokloop/losses.py)
            tokens = with_answer(tokens, data["answer_pos"], data["answers"])
        return cls(data, train_idx, eval_idx, tokens, min(batch_size or n_train, n_train), end_id)

    @property
    def n_train(self) -> int:
        return len(self.train_idx)


@dataclass
class TrainState:
    """Everything a step changes. `order`/`cursor`: the on-device shuffle, one permutation per
    epoch; `chosen`: how much of each batch learned from each recurrence step since the last
    evaluation (depth=best/soft_best); `grads_finite`: no non-finite gradient since the last
    host-side check (kept on the device so the loop does not sync every step on a GPU)."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    gen: torch.Generator
    order: torch.Tensor
    cursor: int
    chosen: torch.Tensor
    ema: dict = field(default_factory=dict)
    step: int = 0  # steps done
    wall_before: float = 0.0  # seconds trained before this process (a resumed run)
    grads_finite: torch.Tensor | None = None
    precision: str = "fp32"  # the training forward's, after any fallback (grokloop/accelerate.py)

    def next_batch(self, data: ResidentData) -> torch.Tensor:
        """The next batch's example ids; a fresh permutation when the epoch runs out."""
        if self.cursor + data.batch > data.n_train:
            self.order = torch.randperm(data.n_train, generator=self.gen, device=self.order.device)
            self.cursor = 0
        idx = data.train_idx[self.order[self.cursor : self.cursor + data.batch]]
        self.cursor += data.batch
        return idx

    def checkpoint_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, optimizer param groups) a checkpoint stores besides the weights."""
        tensors, opt_meta = optimizer_to_tensors(self.opt)
        tensors |= {f"ema.{i}": v for i, v in self.ema.items()}
        tensors |= {
            "data.order": self.order,
            "rng.torch": torch.get_rng_state(),
            "rng.gen": self.gen.get_state(),
            "depth.chosen": self.chosen,
        }
        return tensors, opt_meta

    def restore(self, got, device: torch.device) -> None:
        """Continue from a checkpoint (weights, tensors, state) exactly: weights, optimizer, EMA,
        shuffle, RNG streams, the step and the wall time already spent."""
        weights, tensors, state = got
        self.model.load_state_dict(weights)
        optimizer_from_tensors(self.opt, tensors, state["optimizer"])
        self.ema = {int(k[4:]): v.to(device) for k, v in tensors.items() if k.startswith("ema.")}
        self.order, self.cursor = tensors["data.order"].to(device), state["cursor"]
        self.chosen = tensors.get("depth.chosen", self.chosen).to(device)
        torch.set_rng_state(tensors["rng.torch"])
        self.gen.set_state(tensors["rng.gen"])
        self.step, self.wall_before = state["step"], state["wall_time_s"]
