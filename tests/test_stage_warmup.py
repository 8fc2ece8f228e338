"""strategy.stage_warmup: a stage unfrozen after the start ramps its rate from 0 again; others follow the schedule."""

import torch

from tlexp.schedules import Constant, StageLR


def test_rewarm_ramps_only_the_late_stage():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": [params[0]], "lr": 1.0}, {"params": [params[1]], "lr": 1.0}], lr=1.0)
    scheduler = StageLR(optimizer, Constant(total_steps=20), rewarm=[(0, 4), (8, 4)])
    rates = []
    for _ in range(14):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert all(first == 1.0 for first, _ in rates)  # a stage training from step 0 is not ramped twice
    late = [second for _, second in rates]
    assert late[:8] == [0.0] * 8 and late[8:13] == [0.25, 0.5, 0.75, 1.0, 1.0]
