"""strategy.stage_warmup: a stage unfrozen after the start ramps its rate from 0 again; others follow the schedule."""

import torch

from tlexp.freeze_plan import FreezePlan
from tlexp.schedules import Constant, StageLR


def test_rewarm_ramps_only_the_late_stage():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": [params[0]], "lr": 1.0, "stage": "head"},
                                 {"params": [params[1]], "lr": 1.0, "stage": "blocks"}], lr=1.0)
    plan = FreezePlan(("blocks", "head"), {"blocks": 2, "head": 0}, {"blocks": 1.0, "head": 1.0}, {"blocks": 1, "head": 1})
    scheduler = StageLR(optimizer, Constant(total_steps=20), plan, steps_per_epoch=4, rewarm=True, warmup_steps=4)
    rates = []
    for step in range(14):
        if step % 4 == 0:  # what FineTuning does at each epoch start
            scheduler.enter_epoch(step // 4)
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert all(first == 1.0 for first, _ in rates)  # a stage training from step 0 is not ramped twice
    late = [second for _, second in rates]
    assert late[:8] == [0.0] * 8 and late[8:13] == [0.25, 0.5, 0.75, 1.0, 1.0]
