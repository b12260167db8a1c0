import pytest
import torch

from grokloop.config import ModelConfig
from grokloop.model import LoopedTransformer


@pytest.fixture
def make_model():
    def make(**kw):
        torch.manual_seed(0)
        base = dict(d_vocab=23, n_ctx=5, d_model=32, n_heads=4, d_mlp=64)
        return LoopedTransformer(ModelConfig(**(base | kw)).resolved()).eval()

    return make


def sigkill_when_checkpointed(cmd: list[str], cwd, run_dir, at_step: int, timeout: float = 120):
    """Start `cmd`, SIGKILL it once `run_dir` holds a checkpoint at or past `at_step` (or after
    `timeout` seconds), and wait for it: the start of every kill-then-resume test."""
    import os
    import signal
    import subprocess
    import time

    from grokloop.checkpoint import list_checkpoints

    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and not [s for s in list_checkpoints(run_dir) if s >= at_step]:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
