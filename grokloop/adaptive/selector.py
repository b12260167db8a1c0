"""The halting selector: a learned policy that, on a frozen model, decides after every step to
stop (answer now), abstain ("I don't know"), or continue with core c of the bank.

It reads the normalised state at the answer position and four readout statistics (entropy, top
probability, KL to the previous step's readout, step / max_steps); in a model with a fact
memory also the memory's retrieval margin at every position (`retrieval_margin`: does the
bank hold the fact being looked up?). `train_selector` trains it
with REINFORCE and a batch-mean baseline; reward = 1 if the answer is right, 0 if wrong,
`abstain_reward` for abstaining, minus `step_cost` per step (scaled by the block's layer count
when the bank's blocks differ in size, so the cost is per FLOP). With expected_last_choice the
choice at max_steps (answer or abstain, both rewards known) learns from its expected reward
instead of a sample. The model never changes.
It learns on `train_split`, by default `valid` (held-out facts); `check_train_split` refuses a
split that shares examples with the model's training split. Trained and evaluated by
`python -m grokloop.halting run_dir=RUN` (grokloop/adaptive/halting.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from grokloop.adaptive.rules import (
    core_layers,
    memory_reads,
    per_hop,
    readout_stats,
    retrieval_margin,
    selective_point,
)
from grokloop.evaluate import answer_prefix

STOP, ABSTAIN = 0, 1  # then 2 + c: continue with core c
N_STATS = 4  # entropy, top probability, KL to the previous readout, step / max_steps
# The selector's coverage curve: greedy episodes with these added to its abstain logit. Like the
# confidence threshold's c, the offset trades coverage for selective accuracy (0: as trained;
# large: abstain at once; very negative: never abstain), so both are compared as curves.
# The threshold's curve is exact (every threshold), so the grid is finest where the selector's
# coverage moves fastest, near its trained operating point (0).
ABSTAIN_OFFSETS = (
    -16.0,
    -8.0,
    -4.0,
    -3.0,
    -2.0,
    -1.5,
    -1.0,
    -0.5,
    0.0,
    0.5,
    1.0,
    1.5,
    2.0,
    3.0,
    4.0,
    6.0,
    8.0,
    16.0,
)
# When the selector may abstain: "any" step, or only at "max_steps", after thinking as long as
# it may. With "any", a chain deeper than any trained looks unsolved at early steps, where the
# answer has not yet arrived, and the selector learned to abstain there (khop_perm_memory_rope:
# 5-hop chains answered 0.49 at 5.0 steps, where running on reaches 0.93); with "max_steps" an
# unsolved problem runs to the end and the abstain decision reads the final state.
ABSTAIN_AT = ("any", "max_steps")


@dataclass
class HaltingConfig:
    max_steps: int = 12  # the most steps any rule may run
    step_cost: float = 0.01  # reward cost of one step of core 0 (per layer for other sizes)
    abstain_reward: float = 0.3  # between wrong (0) and right (1)
    hidden: int = 64
    iterations: int = 1500
    batch_size: int = 512
    lr: float = 3e-3
    entropy_bonus: float = 0.01
    halt_bias: float = -3.0  # initial logit of stop: continue is the prior
    abstain_bias: float = -6.0  # initial logit of abstain: rarer still (see Selector)
    train_split: str = "valid"  # held-out facts; never a split that overlaps training
    seed: int = 0
    memory_features: bool = True  # a model with a fact memory: also read its retrieval margins
    abstain_at: str = "any"  # ABSTAIN_AT: abstain at any step, or only at max_steps
    read_state: bool = True  # read the normalised answer-position state (false: only the
    # readout statistics and memory margins, far fewer inputs to
    # fit to the few thousand held-out facts it trains on)
    expected_last_choice: bool = False  # learn the choice at max_steps from its expected reward
    read_history: bool = False  # also read every earlier step's signals (`history_width`)
    read_length: bool = False  # also read the query's relation count k and the step's distance
    # to it ((t - k) / max_steps): a rotary model's state carries no absolute position, so
    # without it the selector cannot know how many steps a k-hop chain needs

    def __post_init__(self):
        if self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} must be at least 1")
        if not 0 <= self.abstain_reward <= 1:
            raise ValueError(
                f"abstain_reward={self.abstain_reward} must lie between the reward "
                "of a wrong answer (0) and of a right one (1)"
            )
        if self.step_cost < 0:
            raise ValueError(f"step_cost={self.step_cost} must be >= 0")
        if self.abstain_at not in ABSTAIN_AT:
            raise ValueError(f"abstain_at={self.abstain_at!r} is not one of {ABSTAIN_AT}")


def history_width(max_steps: int, n_positions: int) -> int:
    """Inputs of HaltingConfig.read_history: for each of max_steps steps its top probability,
    negated entropy, the memory's margin at each of n_positions input positions (0 without a
    memory), and whether that step's answer is the current one (all 0 for steps not yet run).
    The same signals as the abstention-signals probe's combination (probes/signals.py), which
    measured that together they rank right answers on deeper chains above wrong ones better
    than the top probability alone."""
    return max_steps * (3 + n_positions)


def features(
    state_at_answer,
    s: dict,
    step: int,
    max_steps: int,
    memory: torch.Tensor | None = None,
    history: torch.Tensor | None = None,
    length: torch.Tensor | None = None,
) -> torch.Tensor:
    """[batch, d_model + 4 (+ memory's) (+ history's)]: the normalised state (none where
    state_at_answer is None), the readout's statistics `s` (`readout_stats`), for a model with
    a fact memory its retrieval margins (`retrieval_margin`), the episode so far
    (`history_width`), and with `length` (the answer positions [batch], read_length) the
    query's length and how far the step is from it, both over max_steps."""
    entropy = s["entropy"]
    kl = torch.zeros_like(entropy) if s["kl"] is None else s["kl"]
    stats = torch.stack(
        [entropy, s["top"], kl.clamp_min(0).log1p(), torch.full_like(entropy, step / max_steps)],
        dim=-1,
    )
    parts = (
        []
        if state_at_answer is None
        else [F.layer_norm(state_at_answer, state_at_answer.shape[-1:])]
    ) + [stats]
    if length is not None:
        k = length.float()[:, None]
        parts.append(torch.cat([k, step - k], dim=-1) / max_steps)
    return torch.cat(parts + [x for x in (memory, history) if x is not None], dim=-1)


class Selector(nn.Module):
    """The halting policy: features -> logits over [stop, abstain, continue with core 0..C-1].
    `n_memory` > 0 (a model with a fact memory, HaltingConfig.memory_features): it also reads
    the memory's retrieval margin at each of the n_memory / 2 input positions, this step's and
    the smallest over the steps so far. `read_state=False`: it does not read the state.
    `n_history` > 0 (HaltingConfig.read_history): it reads the episode so far
    (`history_width`). `read_length`: it reads the query's length (`features`)."""

    def __init__(
        self,
        d_model: int,
        n_cores: int,
        hidden: int = 64,
        halt_bias: float = 0.0,
        abstain_bias: float = 0.0,
        n_memory: int = 0,
        read_state: bool = True,
        n_history: int = 0,
        read_length: bool = False,
    ):
        super().__init__()
        self.d_model, self.n_cores, self.hidden, self.n_memory = d_model, n_cores, hidden, n_memory
        self.read_state, self.n_history, self.read_length = read_state, n_history, read_length
        self.net = nn.Sequential(
            nn.Linear(self.n_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 2 + n_cores),
        )
        # A prior against collapse (PonderNet's geometric prior, a halting bias): a policy
        # that stops or abstains at random from step 1 meets mostly unanswered problems there
        # (a k-hop chain needs k steps), so its batch-mean reward is low, abstaining's fixed
        # reward beats it, and it learns to abstain at step 1 and never sees a later step
        # (measured on khop_perm_memory). Stop starts at e^-3 of continue and abstain far
        # lower, so early episodes run long, stopping is learned first, and abstaining pays
        # only where answering keeps failing.
        with torch.no_grad():
            self.net[-1].bias[STOP] += halt_bias
            self.net[-1].bias[ABSTAIN] += abstain_bias

    @property
    def n_features(self) -> int:
        return (
            self.d_model * self.read_state
            + N_STATS
            + 2 * self.read_length
            + self.n_memory
            + self.n_history
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats)


def reinforce_loss(log_prob_of_actions, reward, entropy, entropy_bonus: float) -> torch.Tensor:
    """REINFORCE with the batch-mean reward as baseline: -E[(R - b) * sum_t log pi(a_t)]."""
    advantage = reward - reward.mean()
    return -(advantage.detach() * log_prob_of_actions).mean() - entropy_bonus * entropy.mean()


def dataset_tensors(ds, device) -> dict[str, torch.Tensor]:
    return {
        k: torch.as_tensor(getattr(ds, k), device=device)
        for k in ("inputs", "answer_pos", "answers", "hops")
    }


@dataclass
class Episodes:
    """A batch of episodes in flight: the model's state per example and everything the episode
    has recorded. `margin`/`least`: the memory's retrieval margin at each input position at this
    step and the smallest so far (a model with a memory); `signals`/`said`: every step's signals
    and answer so far (read_history; -1: not yet run); `last_value`: the expected reward of the
    choice at max_steps (expected_last_choice); `right_at_end`: whether the episode's last
    answer is right (abstained or not); `abstain_margin`: how far the abstain logit stood above
    the best other action at the last step (-inf where abstaining was not allowed)."""

    e: torch.Tensor
    state: torch.Tensor
    next_core: torch.Tensor
    active: torch.Tensor
    prev: torch.Tensor
    log_prob: torch.Tensor
    entropy: torch.Tensor
    last_value: torch.Tensor
    steps: torch.Tensor
    cost: torch.Tensor
    correct: torch.Tensor
    abstained: torch.Tensor
    right_at_end: torch.Tensor
    abstain_margin: torch.Tensor
    margin: torch.Tensor | None = None
    least: torch.Tensor | None = None
    signals: torch.Tensor | None = None
    said: torch.Tensor | None = None
    core_steps: torch.Tensor | None = None  # [batch, n_cores]: steps run with each core
    answer_pos: torch.Tensor | None = None  # [batch]: the query's length (read_length)

    @classmethod
    def start(cls, model, selector, tokens, T: int) -> "Episodes":
        B, device = len(tokens), tokens.device
        with torch.no_grad():
            e, state = model.enter_loop(tokens)
            # The episode writes each step's rows into `state` in place, and with no prelude
            # the initial state is the input embedding e itself: a copy keeps e, which input
            # injection adds at every step, unchanged (without it answers fell from 0.99 to 0.14).
            state = state.clone()
        zeros = lambda dtype=torch.float: torch.zeros(B, dtype=dtype, device=device)
        ep = cls(
            e,
            state,
            torch.full((B,), model.schedule[0], device=device),
            torch.ones(B, dtype=torch.bool, device=device),
            torch.zeros(B, model.config.d_vocab, device=device),
            zeros(),
            zeros(),
            zeros(),
            zeros(),
            zeros(),
            zeros(torch.bool),
            zeros(torch.bool),
            zeros(torch.bool),
            zeros(),
        )
        ep.core_steps = torch.zeros(B, len(model.cores), dtype=torch.long, device=device)
        if selector.n_memory:
            # one margin per input position of the model; a shorter prefix (an atomic fact's
            # two tokens in a three-token task) leaves the rest at 0
            ep.margin = torch.zeros(B, selector.n_memory // 2, device=device)
            ep.least = torch.full_like(ep.margin, float("inf"))
        if selector.n_history:
            if selector.n_history != history_width(T, selector.n_memory // 2):
                raise ValueError(
                    f"this selector reads the history of {selector.n_history} "
                    f"inputs, not that of max_steps={T}; run it with the max_steps "
                    "it was trained with"
                )
            ep.signals = torch.zeros(B, T, selector.n_history // T - 1, device=device)
            ep.said = torch.full((B, T), -1, dtype=torch.long, device=device)
        return ep

    @torch.no_grad()
    def think(self, model, idx, t: int, positions, got: dict | None):
        """Step t of the active rows `idx`, each with the core it chose; (the readout's log
        probabilities, the state at the answer position)."""
        for c in range(len(model.cores)):
            rows = idx[self.next_core[idx] == c]
            if not len(rows):
                continue
            self.state[rows] = model.step(
                self.state[rows], self.e[rows], t - 1, c, hooked=got is not None
            )
            self.core_steps[rows, c] += 1
            if got is not None:
                width = got["scores"].shape[1]
                self.margin[rows, :width] = retrieval_margin(got["scores"]).float()
                self.least[rows] = torch.minimum(self.least[rows], self.margin[rows])
        logp = model.read(self.state[idx], positions[idx]).float().log_softmax(-1)
        return logp, self.state[idx, positions[idx]]

    def observe(self, selector, idx, t: int, T: int, logp, at_answer) -> torch.Tensor:
        """The selector's features at step t for the rows `idx`, recording the step's signals."""
        memory = (
            torch.cat([self.margin[idx], self.least[idx]], dim=-1)
            if self.margin is not None
            else None
        )
        stats = readout_stats(logp, self.prev[idx] if t > 1 else None)
        history = None
        if self.signals is not None:
            self.signals[idx, t - 1, 0], self.signals[idx, t - 1, 1] = (
                stats["top"],
                -stats["entropy"],
            )
            if self.margin is not None:
                self.signals[idx, t - 1, 2:] = self.margin[idx]
            self.said[idx, t - 1] = logp.argmax(-1)
            agrees = (self.said[idx] == logp.argmax(-1, keepdim=True)).float().unsqueeze(-1)
            history = torch.cat([self.signals[idx], agrees], dim=-1).flatten(1)
        length = self.answer_pos[idx] if selector.read_length else None
        return features(
            at_answer if selector.read_state else None, stats, t, T, memory, history, length
        )

    def record(self, idx, t: int, action, dist, logits, right, cost_of_step, value=None) -> None:
        """Book step t's action for the rows `idx` (REINFORCE's log probability, unless the
        last choice learns from its expected `value`) and end the episodes that stopped or
        abstained; the rest continue with the core they chose."""
        if value is not None:
            self.last_value = self.last_value.index_add(0, idx, value)
        else:
            self.log_prob = self.log_prob.index_add(0, idx, dist.log_prob(action))
        self.entropy = self.entropy.index_add(0, idx, dist.entropy())
        self.steps[idx] = t
        self.cost[idx] += cost_of_step
        done = action < 2
        stop = action == STOP
        self.correct[idx[stop]] = right[stop]
        self.right_at_end[idx[done]] = right[done]
        others = torch.cat([logits[:, :ABSTAIN], logits[:, ABSTAIN + 1 :]], dim=-1)
        self.abstain_margin[idx[done]] = (logits[:, ABSTAIN] - others.max(-1).values)[done].detach()
        self.abstained[idx[action == ABSTAIN]] = True
        self.next_core[idx[~done]] = action[~done] - 2
        self.active[idx[done]] = False


def allowed_logits(logits, t: int, T: int, cfg: HaltingConfig, abstain_offset: float):
    """The selector's logits with what step t may not do masked out: at max_steps only stop and
    abstain; before it abstain only where cfg.abstain_at is "any"; `abstain_offset` added to
    the abstain logit (ABSTAIN_OFFSETS: the selector's coverage curve)."""
    if t == T or abstain_offset or cfg.abstain_at != "any":
        logits = logits.clone()
        logits[:, ABSTAIN] += abstain_offset
    if t == T:
        logits[:, 2:] = float("-inf")
    elif cfg.abstain_at == "max_steps":
        logits[:, ABSTAIN] = float("-inf")
    return logits


def rollout(
    model,
    selector,
    tokens,
    positions,
    answers,
    cfg: HaltingConfig,
    greedy: bool,
    generator: torch.Generator | None = None,
    abstain_offset: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Run the selector's episodes for a batch; the model runs under no_grad.

    Step 1 runs the model's first scheduled core; after each step the selector acts. At
    `max_steps` only stop and abstain are allowed; before it abstain only where
    `cfg.abstain_at` is "any". `abstain_offset` is added to the abstain logit
    (ABSTAIN_OFFSETS: the selector's coverage curve)."""
    T = cfg.max_steps
    layers = torch.tensor(core_layers(model), dtype=torch.float, device=tokens.device)
    ep = Episodes.start(model, selector, tokens, T)
    ep.answer_pos = positions
    read_memory = selector.n_memory > 0
    # each hooked step leaves its memory's scores in `got`
    reads = memory_reads(model, T) if read_memory else contextlib.nullcontext({})
    # cfg.expected_last_choice: at max_steps only stop (reward: right or not) and abstain
    # (abstain_reward) remain, and both rewards are known, so that choice learns from its
    # expected reward, exactly, instead of from the one action sampled; REINFORCE then needs
    # only the earlier choices (`train_selector`)
    expect_last = cfg.expected_last_choice and not greedy
    with reads as got:
        for t in range(1, T + 1):
            idx = ep.active.nonzero().squeeze(1)
            if not len(idx):
                break
            logp, at_answer = ep.think(model, idx, t, positions, got if read_memory else None)
            logits = allowed_logits(
                selector(ep.observe(selector, idx, t, T, logp, at_answer)),
                t,
                T,
                cfg,
                abstain_offset,
            )
            dist = torch.distributions.Categorical(logits=logits)
            action = (
                logits.argmax(-1)
                if greedy
                else torch.multinomial(dist.probs, 1, generator=generator).squeeze(1)
            )
            right = logp.argmax(-1) == answers[idx]  # the answer now, whatever the action
            value = None
            if t == T and expect_last:
                p_abstain = dist.probs[:, ABSTAIN]
                value = p_abstain * cfg.abstain_reward + (1 - p_abstain) * right.float()
            ep.record(
                idx,
                t,
                action,
                dist,
                logits,
                right,
                layers[ep.next_core[idx]] / layers[model.schedule[0]],
                value,
            )
            ep.prev[idx] = logp
    reward = (
        torch.where(ep.abstained, cfg.abstain_reward, ep.correct.float()) - cfg.step_cost * ep.cost
    )
    return {
        "log_prob": ep.log_prob,
        "entropy": ep.entropy,
        "reward": reward,
        "steps": ep.steps,
        "cost": ep.cost,
        "correct": ep.correct,
        "abstained": ep.abstained,
        "right_at_end": ep.right_at_end,
        "abstain_margin": ep.abstain_margin,
        "last_value": ep.last_value,
        "at_end": ep.steps == T,
        "core_steps": ep.core_steps,
    }


def check_train_split(ds, split: str) -> None:
    """Refuse a selector training split that is missing or shares examples with the dataset's
    training split: the selector must learn to halt on facts the model never trained on."""
    import numpy as np

    if split not in ds.splits:
        fix = (
            "train the model on data with held-out valid facts (data.valid_fraction > 0, or "
            "data.valid_size > 0 for khop_perm)"
            if split == "valid"
            else "use train_split=valid"
        )
        raise ValueError(
            f"train_split={split!r} is not a split of this dataset (its splits: "
            f"{', '.join(sorted(ds.splits))}); {fix}"
        )
    shared = np.intersect1d(ds.splits[split], ds.splits["train"]).size
    if shared:
        raise ValueError(
            f"train_split={split!r} shares {shared:,} of its {len(ds.splits[split]):,} "
            "examples with the training split; train the selector on held-out "
            "facts: use train_split=valid"
        )


def train_selector(model, ds, cfg: HaltingConfig, device="cpu") -> tuple[Selector, list[dict]]:
    """REINFORCE on the frozen model over `cfg.train_split`; returns the selector and its curve."""
    check_train_split(ds, cfg.train_split)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    n_memory = 2 * model.config.n_ctx if cfg.memory_features and model.memory is not None else 0
    n_history = history_width(cfg.max_steps, n_memory // 2) if cfg.read_history else 0
    selector = Selector(
        model.config.d_model,
        len(model.cores),
        cfg.hidden,
        cfg.halt_bias,
        cfg.abstain_bias,
        n_memory,
        cfg.read_state,
        n_history,
        cfg.read_length,
    ).to(device)
    opt = torch.optim.Adam(selector.parameters(), lr=cfg.lr)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    data = dataset_tensors(ds, device)
    pool = torch.as_tensor(ds.splits[cfg.train_split], device=device)
    tokens = answer_prefix(data["inputs"], data["answer_pos"], pool)
    curve = []
    from tqdm import tqdm

    for it in tqdm(
        range(cfg.iterations),
        desc=f"halting selector (REINFORCE on {cfg.train_split})",
        mininterval=2.0,
        dynamic_ncols=True,
    ):
        batch = pool[
            torch.randint(
                len(pool), (min(cfg.batch_size, len(pool)),), generator=gen, device=device
            )
        ]
        out = rollout(
            model,
            selector,
            tokens[batch],
            data["answer_pos"][batch],
            data["answers"][batch],
            cfg,
            greedy=False,
            generator=gen,
        )
        reward = out["reward"]
        if cfg.expected_last_choice:  # the episodes that reached max_steps: their expected reward
            reward = torch.where(
                out["at_end"], out["last_value"].detach() - cfg.step_cost * out["cost"], reward
            )
        loss = (
            reinforce_loss(out["log_prob"], reward, out["entropy"], cfg.entropy_bonus)
            - out["last_value"].mean()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 50 == 0 or it == cfg.iterations - 1:
            curve.append(
                {
                    "iteration": it,
                    "reward": out["reward"].mean().item(),
                    "steps": out["steps"].mean().item(),
                    "abstain": out["abstained"].float().mean().item(),
                }
            )
    return selector.eval(), curve


def summarize_selector(out: dict[str, torch.Tensor], hops) -> dict:
    """Accuracy, coverage, selective accuracy and compute of the selector's greedy episodes:
    overall and per hop count (each with its n). An abstention counts as not right in `acc`."""
    answered = ~out["abstained"]
    hop_rows = per_hop(hops, acc=out["correct"], mean_steps=out["steps"])
    for key, row in hop_rows.items():
        row |= selective_point(out["correct"][hops == int(key[5:])], answered[hops == int(key[5:])])
    return {
        "acc": out["correct"].float().mean().item(),
        "n": len(answered),
        **selective_point(out["correct"], answered),
        "mean_steps": out["steps"].mean().item(),
        "mean_cost": out["cost"].mean().item(),
        **hop_rows,
    }
