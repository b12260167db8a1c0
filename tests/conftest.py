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
