"""The conventional alternative to editing a bank: fine-tune every weight on the edited fact
(the baseline of edit propagation, grokloop/bank/edits.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def finetune_editor(model, steps: int, lr: float):
    """method=finetune: `apply(edit)` trains every weight for `steps` Adam steps (learning rate
    `lr`) on the edited atomic query `h r` -> new tail alone (cross-entropy of the answer after
    the last step); `restore()` puts back the weights (and bank) it started from."""
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    device = next(model.parameters()).device

    def apply(e):  # an Edit (grokloop/bank/edits.py)
        tokens = torch.tensor([[e.head, e.relation]], device=device)
        target, pos = torch.tensor([e.new], device=device), torch.tensor([1], device=device)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        with torch.enable_grad():
            for _ in range(steps):
                logits = model.readout_steps(tokens, model.n_steps, positions=pos)[-1]
                loss = F.cross_entropy(logits.float(), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval()

    def restore():
        model.load_state_dict(start)
        model.eval()

    return apply, restore
