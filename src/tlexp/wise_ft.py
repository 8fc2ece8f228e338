"""WiSE-FT (Wortsman et al., CVPR 2022) on a finished run, no retraining: ``tlexp-wise-ft <run dir>``.

The weight-space ensemble ``theta(a) = (1 - a) * theta_start + a * theta_tuned`` of the run's tested best checkpoint
and the weights the run started from, ``a`` chosen on the validation split from a grid (0, 0.1, ..., 1), then tested
once at the chosen ``a`` (and at ``a = 1``, the run itself, for comparison):

- ``theta_start``: the strategy's module as ``train`` built it (its seed, the pretrained backbone; ``reinit``'s stages
  as they were drawn), as a plain network (``TransferModule.export_network``: lora's adapters, ssf's scales folded);
- the head: the fine-tuned head for every ``a``. The new head has no pretrained value to start from (the paper's
  zero-shot head does not exist here), so only the backbone is interpolated, as the paper does without one;
- BatchNorm's running statistics are interpolated like the weights (its batch counters are the fine-tuned ones).

Writes ``<run dir>/wise_ft.json`` (the curve a -> val/acc, the chosen ``a``, test/acc, and test/target_acc where the
run had a ``data.target_domain``, at the chosen ``a`` and at ``a = 1``) and, with ``--export``, the chosen network as
``tlexp-export`` writes one (``export.load`` reads it). A run that did not finish, or whose checkpoint is missing, is
refused before anything is written. Evaluated on ``--device`` in float32: ``a = 1`` gives the run's val/acc where the
run was validated on the same kind of device and precision. Run it where the run ran (its ``paths.data_dir``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from torch import nn

from tlexp import export, finished
from tlexp.errors import InvalidValue
from tlexp.inference import inference_pass
from tlexp.shared_files import write_atomic
from tlexp.trusted_files import UntrustedFile, load_run_config, load_tensors

OUTPUT = "wise_ft.json"
GRID = tuple(i / 10 for i in range(11))
RUN = "a finished tlexp run directory (result.json says completed, with its tested best checkpoint)"


def interpolate(start: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * start + alpha * tuned`` for every floating-point tensor (weights and BatchNorm running
    statistics; exactly ``start`` at 0 and ``tuned`` at 1); other tensors (batch counters) from ``tuned``."""
    return {name: (1 - alpha) * start[name] + alpha * value if value.is_floating_point() else value
            for name, value in tuned.items()}


def networks(run_dir: Path, checkpoint: Path):
    """(data, start network, fine-tuned network, module, config) of a finished run, built as ``train`` built it."""
    from tlexp.train import build  # which imports the strategies

    cfg = load_run_config(run_dir / ".hydra" / "config.yaml", nodes=("model", "strategy", "data"))
    cfg.paths.output_dir = str(run_dir)
    cfg.data.output_dir = None  # nothing of the evaluation is written into the run but wise_ft.json
    L.seed_everything(cfg.seed, verbose=False)  # a random start (model=tiny, reinit) is drawn as the run drew it
    datamodule, module = build(cfg)
    if not module.uses_pretrained_weights:
        raise InvalidValue("run", str(run_dir), RUN + " of a strategy that starts from pretrained weights",
                           f"strategy {cfg.strategy._target_} starts from random weights")
    start = module.export_network()
    module.load_state_dict(load_tensors(checkpoint, "checkpoint")["state_dict"])
    tuned = module.export_network()
    start.head.load_state_dict(tuned.head.state_dict())  # the fine-tuned head at every a
    return datamodule, start, tuned, module, cfg


def accuracy(network: nn.Module, loader, datamodule, device: torch.device) -> float:
    """The share of ``loader``'s images ``network`` classifies right (eval mode, batches prepared as in training)."""
    correct = total = 0
    with inference_pass(network):
        for batch in loader:
            images, labels = datamodule.on_after_batch_transfer([t.to(device) for t in batch], 0)
            correct += int((network(images).argmax(1) == labels).sum())
            total += len(labels)
    return correct / total


def wise_ft(source: str | Path, alphas: Sequence[float] = GRID, out: str | Path | None = None, device: str | None = None) -> dict:
    """Choose ``a`` on validation, test at it and at 1, write ``wise_ft.json`` (and the network to ``out``); the record."""
    path = Path(source)
    if not path.is_dir():
        raise InvalidValue("run", str(source), RUN, "not a directory")
    if isinstance(alphas, str) or not alphas or any(not isinstance(a, (int, float)) or not 0 <= a <= 1 for a in alphas):
        raise InvalidValue("alphas", alphas, "one or more numbers in [0, 1] (comma-separated on the command line)")
    run_dir, checkpoint = finished.locate(path, "run", RUN)
    datamodule, start, tuned, module, cfg = networks(run_dir, checkpoint)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    start, tuned = start.to(device), tuned.to(device)
    network = copy.deepcopy(tuned)  # holds theta(a)
    starting, fine_tuned = start.state_dict(), tuned.state_dict()

    def load(alpha: float) -> nn.Module:
        network.load_state_dict(interpolate(starting, fine_tuned, alpha))
        return network

    def test(alpha: float) -> dict[str, float]:
        loaders = datamodule.test_dataloader()
        loaders = loaders if isinstance(loaders, list) else [loaders]
        names = ("test/acc", "test/target_acc")
        return {name: accuracy(load(alpha), loader, datamodule, device) for name, loader in zip(names, loaders)}

    curve = {float(a): accuracy(load(a), datamodule.val_dataloader(), datamodule, device) for a in alphas}
    chosen = max(curve, key=lambda a: (curve[a], -a))  # ties: the smaller a, nearer the start
    record = {"run": str(run_dir), "checkpoint": str(checkpoint), "curve": {str(a): v for a, v in curve.items()},
              "alpha": chosen, "val/acc": curve[chosen], **test(chosen),
              "fine_tuned": {"val/acc": accuracy(load(1.0), datamodule.val_dataloader(), datamodule, device), **test(1.0)}}
    if out is not None:
        load(chosen)
        record["export"] = str(export.save(network.cpu(), module.hparams, cfg, checkpoint, out, wise_ft_alpha=chosen))
    write_atomic(run_dir / OUTPUT, json.dumps(record, indent=2))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tlexp-wise-ft", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="run", help="finished run directories (a race's confirmations: "
                        "<race dir>/*/<strategy>/confirm_seed*/: the slash leaves out their .lock files)")
    parser.add_argument("--alphas", default=",".join(map(str, GRID)), help="the grid of a, comma-separated (default 0,0.1,...,1)")
    parser.add_argument("--export", metavar="OUT", help="also save the network at the chosen a (as tlexp-export; one run only)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda where available)")
    args = parser.parse_args(argv)
    try:
        alphas = [float(a) for a in args.alphas.split(",")]
    except ValueError:
        alphas = args.alphas
    if args.export and len(args.runs) > 1:
        parser.error("--export takes one run")
    refused = 0
    for run in args.runs:  # each on its own: a refused run leaves the others' results
        try:
            record = wise_ft(run, alphas, args.export, args.device)
        except (InvalidValue, UntrustedFile) as error:
            print(f"tlexp-wise-ft: {error}", file=sys.stderr)
            refused += 1
            continue
        print(f"tlexp-wise-ft: a={record['alpha']}: val/acc {record['val/acc']:.4f}, test/acc {record['test/acc']:.4f} "
              f"(a=1: {record['fine_tuned']['test/acc']:.4f}); {Path(record['run']) / OUTPUT}")
    return 2 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
