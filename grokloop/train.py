"""Training: one explicit loop, data on the device, loss on the answer token.

    python -m grokloop.train experiment=composition_small [key=value ...] [resume=true]

`train(cfg, out_dir)` is the pure entry; `main` is the thin Hydra wrapper. A run directory holds
config.json, metrics.jsonl (one row per evaluation), summary.json and checkpoints/.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from datagen import load_or_build
from datagen.dataset import code_version
from grokloop.checkpoint import (last_good_checkpoint, optimizer_from_tensors,
                                 optimizer_to_tensors, save_checkpoint)
from grokloop.config import RunConfig
from grokloop.depth import depth_loss
from grokloop.evaluate import answer_prefix, evaluate
from grokloop.model import LoopedTransformer
from grokloop.optim import grokfast_ema, lr_at, make_optimizer, perpendicular_grad
from grokloop.schedule import log_schedule


def resolve_device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def prepare(cfg: RunConfig):
    """Dataset, filled-in model config and checks, all before any run directory exists."""
    ds = load_or_build(cfg.data, cfg.data_cache)
    wanted = cfg.train.eval_splits or ds.eval_splits
    missing = [s for s in wanted if s not in ds.eval_splits]
    if missing:
        raise ValueError(f"train.eval_splits names {missing[0]!r}, which task {ds.task!r} does not "
                         f"produce; its splits are {ds.eval_splits}")
    if cfg.train.stop_at_grok and cfg.train.stop_at_grok not in wanted:
        raise ValueError(f"train.stop_at_grok={cfg.train.stop_at_grok!r} is not an evaluated "
                         f"split; choose one of {wanted}")
    cfg.model.d_vocab = cfg.model.d_vocab or len(ds.vocab)
    cfg.model.n_ctx = cfg.model.n_ctx or ds.n_ctx
    if cfg.train.mix_cores and len(cfg.model.bank) < 2:
        raise ValueError("train.mix_cores=true needs a bank of several cores, e.g. "
                         "model.core_sizes=[1,2]")
    if cfg.model.d_vocab < len(ds.vocab) or cfg.model.n_ctx < ds.n_ctx:
        raise ValueError(f"model.d_vocab/n_ctx ({cfg.model.d_vocab}/{cfg.model.n_ctx}) are smaller "
                         f"than the dataset's ({len(ds.vocab)}/{ds.n_ctx}); set them to 0 (auto)")
    return ds, wanted


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False) -> dict:
    ds, eval_names = prepare(cfg)
    out_dir = Path(out_dir)
    if not resume and (out_dir / "metrics.jsonl").exists():
        raise FileExistsError(f"{out_dir} already holds a run; pass resume=true to continue it "
                              "or choose another out_dir")
    if resume and (done := finished_summary(cfg, out_dir)) is not None:
        print(f"{out_dir} already finished this config; nothing to do")
        return done
    device = resolve_device(cfg.train.device)
    tc = cfg.train

    # --- data, resident on the device for the whole run -----------------------------------
    data = {k: torch.as_tensor(getattr(ds, k), device=device)
            for k in ("inputs", "answer_pos", "answers", "hops")}
    train_idx = torch.as_tensor(ds.splits["train"], device=device)
    eval_idx = {s: torch.as_tensor(ds.splits[s], device=device) for s in eval_names}
    n_train = len(train_idx)
    batch = min(tc.batch_size or n_train, n_train)
    train_tokens = answer_prefix(data["inputs"], data["answer_pos"], train_idx)

    # --- model, optimizer, RNG ----------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    model = LoopedTransformer(cfg.model).to(device)
    model.cfg.device = str(device)
    opt = make_optimizer(model, cfg.optim)
    params = list(model.parameters())
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    order, cursor, ema, start, wall_before = torch.arange(n_train, device=device), n_train, {}, 0, 0.0
    # best / soft_best: how much of each batch learned from each step, summed between evaluations
    chosen = torch.zeros(cfg.model.n_steps if tc.depth in ("best", "soft_best") else 0, device=device)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(cfg.to_dict() | {"code_version": code_version()},
                                                    indent=2))
    metrics_path = out_dir / "metrics.jsonl"
    if resume and (got := last_good_checkpoint(out_dir)) is not None:
        weights, tensors, state = got
        model.load_state_dict(weights)
        optimizer_from_tensors(opt, tensors, state["optimizer"])
        ema = {int(k[4:]): v.to(device) for k, v in tensors.items() if k.startswith("ema.")}
        order, cursor = tensors["data.order"].to(device), state["cursor"]
        chosen = tensors.get("depth.chosen", chosen).to(device)
        torch.set_rng_state(tensors["rng.torch"])
        gen.set_state(tensors["rng.gen"])
        start, wall_before = state["step"], state["wall_time_s"]
        rows = [r for r in map(json.loads, metrics_path.read_text().splitlines()) if r["step"] <= start]
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"resumed {out_dir} at step {start}")
    else:
        metrics_path.write_text("")

    # Random depth: the whole sequence is drawn once from the seed, so a step's depth is a
    # function of its index (exact on resume) and costs no host sync in the loop.
    depths = []
    if tc.depth == "random":
        picks = torch.randint(len(tc.depth_choices), (tc.steps,),
                              generator=torch.Generator().manual_seed(cfg.seed + 1))
        depths = [tc.depth_choices[i] for i in picks.tolist()]
    schedules = []   # mixed cores: every step's schedule drawn once from the seed, likewise
    if tc.mix_cores:
        cores = torch.Generator().manual_seed(cfg.seed + 2)
        schedules = [torch.randint(len(cfg.model.bank), (depths[i] if depths else cfg.model.n_steps,),
                                   generator=cores).tolist() for i in range(tc.steps)]
    moe = cfg.model.moe_experts > 0
    eval_steps = set(log_schedule(tc.steps, tc.eval_every_min, tc.eval_every_max))
    ckpt_steps = set(log_schedule(tc.steps, tc.eval_every_min, tc.checkpoint_every_max, 5))
    history = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    t0 = time.perf_counter() - wall_before

    from tqdm import tqdm
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, disable=not tc.progress,
               dynamic_ncols=True, mininterval=1.0)
    model.train()
    for step in bar:
        # --- batch: on-device shuffle, one permutation per epoch --------------------------------
        if cursor + batch > n_train:
            order, cursor = torch.randperm(n_train, generator=gen, device=device), 0
        idx = train_idx[order[cursor:cursor + batch]]
        cursor += batch
        n_steps = depths[step] if depths else cfg.model.n_steps

        loss, share = depth_loss(model, train_tokens[idx], data["answer_pos"][idx],
                                 data["answers"][idx], tc.depth, n_steps,
                                 schedules[step] if schedules else None, tc.grad_last_k, tc.loss,
                                 tc.float64_loss, tc.best_step_tol, tc.soft_best_tau)
        if len(chosen):
            chosen += share   # stays on the device; read at evaluation
        if moe and tc.moe_balance:
            loss = loss + tc.moe_balance * model.moe_balance_loss()
        # Checking needs a host sync: every step on the CPU (free), else where we evaluate or
        # save, which is enough to never write a non-finite checkpoint.
        check = device.type == "cpu" or step + 1 in eval_steps or step + 1 in ckpt_steps
        if check and not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; the last good "
                                     f"checkpoint is kept in {out_dir / 'checkpoints'}. Lower "
                                     "optim.lr, or try train.float64_loss=true / train.loss=stablemax")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grokfast_lambda > 0:
            grokfast_ema(params, ema, cfg.optim.grokfast_alpha, cfg.optim.grokfast_lambda)
        if cfg.optim.perpendicular_grad:
            perpendicular_grad(params)
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.optim)
        opt.step()

        done = step + 1
        if done in eval_steps:
            row = {"step": done, "loss/train": loss.item(),
                   "weight_norm": math.sqrt(sum(p.detach().pow(2).sum().item() for p in params))}
            row |= evaluate(model, data, eval_idx, cfg.model.n_steps, tc.eval_batch_size)
            if len(chosen):   # which step the batches learned from since the last evaluation
                row |= {f"depth/chosen_step/{t + 1}": v for t, v in
                        enumerate((chosen / chosen.sum()).tolist())}
                chosen.zero_()
            row["wall_time_s"] = time.perf_counter() - t0
            history.append(row)
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            bar.set_postfix({"loss": f"{row['loss/train']:.3g}"} |
                            {s: f"{row[f'acc/{s}']:.3f}" for s in eval_names[:3]})
        grokked = bool(tc.stop_at_grok and history and done == history[-1]["step"] and
                       history[-1][f"acc/{tc.stop_at_grok}"] >= tc.grok_threshold)
        if done in ckpt_steps or grokked:  # a grokked run stops here: keep that model
            tensors, opt_meta = optimizer_to_tensors(opt)
            tensors |= {f"ema.{i}": v for i, v in ema.items()}
            tensors |= {"data.order": order, "rng.torch": torch.get_rng_state(),
                        "rng.gen": gen.get_state(), "depth.chosen": chosen}
            save_checkpoint(out_dir, done, model, tensors,
                            {"optimizer": opt_meta, "cursor": cursor, "config": cfg.to_dict(),
                             "wall_time_s": time.perf_counter() - t0})
        if grokked:
            break
    bar.close()

    summary = summarize(history, eval_names, tc.grok_threshold)
    summary["wall_time_s"] = time.perf_counter() - t0
    summary["code_version"] = code_version()
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def finished_summary(cfg: RunConfig, out_dir: Path) -> dict | None:
    """The summary of a run in out_dir that already finished this exact config, else None, so a
    re-launched sweep with resume=true skips its finished runs (and extends one given more steps)."""
    summary, config = out_dir / "summary.json", out_dir / "config.json"
    if not (summary.exists() and config.exists()):
        return None
    saved = json.loads(config.read_text())
    saved.pop("code_version", None)
    return json.loads(summary.read_text()) if saved == json.loads(json.dumps(cfg.to_dict())) else None


def summarize(history: list[dict], splits: list[str], threshold: float) -> dict:
    first = {s: next((r["step"] for r in history if r.get(f"acc/{s}", 0) >= threshold), None)
             for s in splits}
    return {"final": history[-1] if history else {}, "steps": history[-1]["step"] if history else 0,
            f"steps_to_{threshold}": first, "grokked": {s: v is not None for s, v in first.items()}}


def main() -> None:
    import hydra
    from omegaconf import OmegaConf

    from grokloop.config import run_config_from_dict

    @hydra.main(config_path="../conf", config_name="train", version_base="1.3")
    def _main(hcfg) -> None:
        d = OmegaConf.to_container(hcfg, resolve=True)
        out_dir, resume = d.pop("out_dir"), d.pop("resume")
        cfg = run_config_from_dict(d)      # every config error surfaces here, before any file
        summary = train(cfg, out_dir, resume=resume)
        final = {k: round(v, 4) for k, v in summary["final"].items() if k.startswith("acc/")
                 and k.count("/") == 1}
        print(f"final {final}")
        print(f"steps to {cfg.train.grok_threshold}: {summary[f'steps_to_{cfg.train.grok_threshold}']}")
        if cfg.train.report:
            from reports.__main__ import write
            from reports.load import load_run
            from reports.run_report import run_report
            write(Path(out_dir) / "report.html", run_report(load_run(out_dir)))
        print(f"run directory: {Path(out_dir).resolve()}")

    _main()


if __name__ == "__main__":
    main()
