"""Loop regions (model.loops): entry -> (region, steps) ... -> exit, each region a core of the
bank; the schedule they make, the labels and hooks per region and step, and clear refusals."""

import pytest
import torch

from grokloop.config import ModelConfig
from grokloop.model import LoopedTransformer


def two_loops(**kw):
    torch.manual_seed(0)
    base = dict(d_vocab=23, n_ctx=5, d_model=32, n_heads=4, d_mlp=64, injection="add")
    cfg = ModelConfig(**(base | dict(core_sizes=[1, 1], loops=[[0, 2], [1, 3]], n_steps=5) | kw))
    return LoopedTransformer(cfg.resolved()).eval()


def test_regions_run_in_order_and_equal_the_schedule_they_spell():
    m = two_loops()
    assert m.schedule == [0, 0, 1, 1, 1]
    tokens = torch.randint(0, 23, (4, 5), generator=torch.Generator().manual_seed(1))
    assert torch.equal(m(tokens), m(tokens, schedule=[0, 0, 1, 1, 1]))
    assert not torch.allclose(m(tokens), m(tokens, schedule=[0, 1, 0, 1, 1]))
    # thinking longer continues the last region; fewer steps cut the plan
    assert m.config.default_schedule(7) == [0, 0, 1, 1, 1, 1, 1]
    assert m.config.default_schedule(3) == [0, 0, 1]
    assert torch.equal(m(tokens, n_steps=3), m(tokens, schedule=[0, 0, 1]))


def test_labels_and_hooks_name_each_region_and_step():
    m = two_loops(n_prelude=1, n_coda=1)
    labels = [v.label for v in m.layer_table()]
    assert labels == [
        "prelude.L0",
        "r0.s1.c0.L0",
        "r0.s2.c0.L0",
        "r1.s3.c1.L0",
        "r1.s4.c1.L0",
        "r1.s5.c1.L0",
        "coda.L0",
    ]
    assert m.config.regions(6) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3)]
    tokens = torch.randint(0, 23, (2, 5), generator=torch.Generator().manual_seed(1))
    _, cache = m.run_with_cache(tokens)
    # one residual per virtual layer: the logit lens reads each region's steps apart
    assert cache.accumulated_resid().shape[0] == len(labels) + 1
    assert "steps.4.hook_state" in cache and "blocks.5.hook_resid_pre" in cache
    # a schedule given by hand has no regions
    assert m.layer_table([1, 0])[1].region is None


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(loops=[[0, 2], [1, 3]], n_steps=4), "set model.n_steps=5"),
        (dict(loops=[[2, 1]], n_steps=1), "0..1"),
        (dict(loops=[[0, 0]], n_steps=0), "must be at least 1"),
        (dict(loops=[[0]], n_steps=1), "[[core, steps], ...]"),
    ],
)
def test_bad_loops_are_refused_naming_the_fix(kw, words):
    with pytest.raises(ValueError) as err:
        ModelConfig(core_sizes=[1, 1], **kw)
    assert words in str(err.value)


def test_loops_with_mixed_cores_are_refused_before_training(tmp_path):
    from grokloop.cli import compose_run
    from grokloop.train.prepare import prepare

    cfg = compose_run(
        "experiment=loops_two_1layer",
        "train.mix_cores=true",
        f"out_dir={tmp_path / 'run'}",
        f"data_cache={tmp_path / 'cache'}",
    )
    with pytest.raises(ValueError, match="drop one of them"):
        prepare(cfg)
    assert not (tmp_path / "run").exists()  # nothing written


def test_the_loop_presets_match_in_parameters_and_layer_applications():
    from grokloop.cli import compose_run

    built = {}
    for name in ("loops_one_2layer", "loops_two_1layer"):
        cfg = compose_run(f"experiment={name}")
        model = LoopedTransformer(cfg.model.resolved(50, 4))
        applied = sum(len(model.cores[c]) for c in model.schedule)
        built[name] = (sum(p.numel() for p in model.parameters()), applied)
    assert built["loops_one_2layer"] == built["loops_two_1layer"]
