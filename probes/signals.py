"""Abstention signals: at each recurrence step, how well what the model itself reads tells its
right answers from its wrong ones.

Along one episode of the default schedule, for every step t: the AUROC (grokloop.adaptive.rules
.auroc; 0.5 is chance) with which each signal ranks step t's right answers above its wrong ones,
and the largest share of answers a threshold on it keeps at 90% selective accuracy (the
abstention target). The signals are the readout's top probability and its negated entropy at the
answer position, and, in a model with a fact memory, the memory's retrieval margin at each input
position (`retrieval_margin`): what a halting selector reads before it says "I don't know". Where
a fact is missing from the bank the margins separate right from wrong; where a chain is deeper
than any trained the fact is there and the failure lies elsewhere (README, Adaptive thinking).

`Combination` asks whether the signals together say more than the best one alone: a logistic
regression over the whole episode (every step's signals, and whether each step's answer agrees
with the last), fitted on held-out facts of another split and scored at the last step. It bounds
what a selector that waits to the end and reads these signals can gain over a confidence
threshold, without the selector's reinforcement learning in the way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float

from grokloop.adaptive.halting import fact_groups
from grokloop.adaptive.rules import TARGET_SELECTIVE_ACC, auroc, largest_coverage, trajectory


@dataclass
class SignalScores:
    """How well each signal (`signals`, in order) tells right answers from wrong at each step t:
    acc[t] the step's accuracy, auroc[i, t] (nan where step t's answers are all right or all
    wrong), coverage[i, t] a threshold's largest coverage at the target selective accuracy (nan
    where none reaches it); combined: {"auroc", "coverage"} of the fitted Combination at the last
    step, when one was given; n: the facts scored."""

    signals: list[str]
    n: int
    acc: Float[np.ndarray, " step"]
    auroc: Float[np.ndarray, "signal step"]
    coverage: Float[np.ndarray, "signal step"]
    combined: dict | None = None


def signal_values(traj: dict) -> dict[str, torch.Tensor]:
    """Each signal of a `trajectory` as [T, batch], larger meaning more likely right."""
    out = {"top_probability": traj["top"], "neg_entropy": -traj["entropy"]}
    if "margin" in traj:
        out |= {f"margin_pos{j}": traj["margin"][:, :, j] for j in range(traj["margin"].shape[-1])}
    return out


def episode_features(traj: dict) -> torch.Tensor:
    """[batch, T * (signals + 1)]: every step's signals and whether its answer is the last
    step's, all that a selector deciding at the end of the episode can have read."""
    agrees = (traj["argmax"] == traj["argmax"][-1]).float()
    return torch.cat([s.T.float() for s in signal_values(traj).values()] + [agrees.T], dim=1)


class Combination:
    """A logistic regression from `episode_features` to "the last step's answer is right",
    fitted by L-BFGS on standardised features with a small L2 penalty."""

    def __init__(self, features: torch.Tensor, right: torch.Tensor, l2: float = 1e-3):
        if right.all() or not right.any():
            raise ValueError(
                "the fit split's answers are all right or all wrong at the last "
                "step: nothing to fit a combination of signals to; choose another "
                "fit_split or more steps"
            )
        self.mean, self.std = features.mean(0), features.std(0).clamp_min(1e-6)
        x, y = (features - self.mean) / self.std, right.float()
        self.w = torch.zeros(x.shape[1], requires_grad=True)
        self.b = torch.zeros((), requires_grad=True)
        opt = torch.optim.LBFGS([self.w, self.b], max_iter=500, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = (
                F.binary_cross_entropy_with_logits(x @ self.w + self.b, y)
                + l2 * self.w.pow(2).sum()
            )
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.w, self.b = self.w.detach(), self.b.detach()

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std @ self.w + self.b


def fit_combination(model, tokens, positions, answers, n_steps: int) -> Combination:
    """The `Combination` of one batch's episodes (held-out facts, not those it is scored on)."""
    with torch.no_grad():
        traj = trajectory(
            model, tokens, positions, answers, n_steps, margins=model.memory is not None
        )
    return Combination(episode_features(traj), traj["correct"][-1])


@torch.no_grad()
def abstention_signals(
    model,
    tokens,
    positions,
    answers,
    hops,
    n_steps: int,
    combination: Combination | None = None,
    trained_hops: list[int] = (),
    target: float = TARGET_SELECTIVE_ACC,
) -> dict[str, SignalScores]:
    """SignalScores per group of facts (halting's `fact_groups`: all, each hop count and, given
    the hop counts trained on, those deeper than any trained), with `combination` also scored
    at the last step."""
    traj = trajectory(model, tokens, positions, answers, n_steps, margins=model.memory is not None)
    signals = signal_values(traj)
    combined = None if combination is None else combination(episode_features(traj))
    nan = lambda v: np.nan if v is None else v

    def score(mask: torch.Tensor) -> SignalScores:
        right = traj["correct"][:, mask]
        rank = lambda s, t: nan(auroc(s, right[t]))
        keep = lambda s, t: largest_coverage(s, right[t], target).item() or np.nan  # 0: none
        return SignalScores(
            list(signals),
            int(mask.sum()),
            right.double().mean(1).numpy(),
            np.array([[rank(s[t, mask], t) for t in range(n_steps)] for s in signals.values()]),
            np.array([[keep(s[t, mask], t) for t in range(n_steps)] for s in signals.values()]),
            None
            if combined is None
            else {"auroc": rank(combined[mask], -1), "coverage": keep(combined[mask], -1)},
        )

    return {name: score(mask) for name, mask in fact_groups(hops, trained_hops).items()}
