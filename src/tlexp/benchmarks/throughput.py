"""Section 1: training throughput of tlexp against a hand-written PyTorch loop, and the fixed cost per step."""

from __future__ import annotations

import torch

from tlexp.benchmarks.common import Settings, StepClock, make_backbone, make_data, now, sync, throughput, trainer
from tlexp.freeze_plan import freeze
from tlexp.strategies import Full, Partial


def plain_loop(settings: Settings, module, datamodule, steps: int, dataloader: bool = False) -> list[tuple[float, float]]:
    """The physical floor: the same network, optimizer and loss over the preloaded uint8 tensors,
    with the stages and BatchNorm modes tlexp gives the module's first epoch (``freeze``)."""
    device = settings.device
    model = torch.nn.Sequential(module.backbone, module.head).to(device).train()
    freeze(module, epoch=0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    criterion = torch.nn.CrossEntropyLoss()
    images, labels = datamodule.train_set.images, datamodule.train_set.labels
    if dataloader:  # the same per-item Dataset + collate path tlexp's loader takes
        batches = iter(torch.utils.data.DataLoader(datamodule.train_set, batch_size=settings.batch_size, shuffle=True))
    else:
        order = torch.randperm(len(labels))
    times = []
    for step in range(steps):
        if dataloader:
            x, y = next(batches)
        else:
            index = order[(step * settings.batch_size) % len(labels):][: settings.batch_size]
            x, y = images[index], labels[index]
        x, y = datamodule.normalize(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        times.append(now())
    return times


def tlexp_steps(settings: Settings, module, datamodule, steps: int) -> list[tuple[float, float]]:
    clock = StepClock(settings.device)
    trainer(settings, batches=steps, callbacks=[clock]).fit(module, datamodule=datamodule)
    return clock.times


def section_throughput(settings: Settings) -> dict:
    steps, warmup = settings.steps + settings.warmup, settings.warmup
    datamodule = make_data(settings, make_backbone(settings.model), steps * settings.batch_size, 64)
    results = {}
    for name, cls, kwargs in (("full", Full, {}), ("partial", Partial, {"frozen_depth": 4})):
        best = {"plain": [0.0, 0.0], "tlexp": [0.0, 0.0]}  # [wall, cpu] images/s
        for repeat in range(settings.repeats):  # interleaved, order alternated, best of: other processes add noise
            for runner in ("plain", "tlexp")[:: 1 if repeat % 2 == 0 else -1]:
                module = cls(make_backbone(settings.model), datamodule.num_classes, **kwargs)
                times = (plain_loop(settings, module, datamodule, steps) if runner == "plain"
                         else tlexp_steps(settings, module, datamodule, steps))
                best[runner] = [max(a, b) for a, b in zip(best[runner], throughput(times, warmup, settings.batch_size))]
        results[name] = {"plain": best["plain"][0], "tlexp": best["tlexp"][0], "ratio": best["tlexp"][0] / best["plain"][0],
                         "plain_cpu": best["plain"][1], "tlexp_cpu": best["tlexp"][1], "ratio_cpu": best["tlexp"][1] / best["plain"][1]}
        r = results[name]
        print(f"  {name}: wall: plain {r['plain']:.1f} img/s, tlexp {r['tlexp']:.1f} img/s, ratio {r['ratio']:.3f}; "
              f"CPU time: plain {r['plain_cpu']:.1f}, tlexp {r['tlexp_cpu']:.1f}, ratio {r['ratio_cpu']:.3f}", flush=True)
    results["tiny_ms_per_step"] = per_step_cost(settings)
    return results


def per_step_cost(settings: Settings) -> dict[str, list[float]]:
    """[wall, CPU] ms per step of ``full`` on a model so small that the fixed cost per step dominates:
    the plain loop, the plain loop fed by tlexp's DataLoader path, and tlexp."""
    steps, warmup = settings.tiny_steps, settings.tiny_warmup
    data = make_data(settings, make_backbone(settings.tiny_model), steps * settings.batch_size, 64)
    per_step = {}
    for _ in range(2):
        for runner in ("plain", "plain+dataloader", "tlexp"):
            module = Full(make_backbone(settings.tiny_model), data.num_classes)
            times = (tlexp_steps(settings, module, data, steps) if runner == "tlexp"
                     else plain_loop(settings, module, data, steps, dataloader=runner != "plain"))
            ms = [(times[-1][i] - times[warmup - 1][i]) / (steps - warmup) * 1000 for i in (0, 1)]
            per_step[runner] = [min(a, b) for a, b in zip(per_step.get(runner, [float("inf")] * 2), ms)]
    print("  tiny model, ms/step [wall, CPU]: " + ", ".join(f"{k} {w:.1f}/{c:.1f}" for k, (w, c) in per_step.items()), flush=True)
    return per_step
