"""Export a finished run's best model as a plain network: ``tlexp-export <run dir or checkpoint> <out.pt>``.

The module is rebuilt from the run's own ``.hydra/config.yaml`` (backbone without downloading
weights: they come from the checkpoint), the checkpoint is loaded into it, what the strategy added
to the backbone is folded into its weights (``TransferModule.export_network``: ``Lora``'s adapters, ``SSF``'s scales
and shifts; other strategies are copied as they are), and ``torch.save`` writes a dict:

- ``state_dict``: the weights of ``nn.Sequential(backbone=<timm model, num_classes=0>, head=<tlexp head>)``,
  with timm's own key names (no peft wrappers, no optimizer, no metrics);
- ``model``: the run's model config (``create_backbone`` arguments), ``image_size``, ``num_classes``,
  ``head`` (kind, hidden width, dropout), ``strategy`` and the ``checkpoint`` it came from.

``load(out.pt)`` rebuilds that network (eval mode) from the file alone, without peft.
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from tlexp import config
from tlexp.backbone import create_backbone, feature_width
from tlexp.heads import build_head
from tlexp.resume import CHECKPOINT_DIR
from tlexp.results import read_result
from tlexp.strategies import target_name
from tlexp.trusted_files import UntrustedFile, load_run_config, load_tensors


def locate(source: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint) for a run directory (its tested best checkpoint, else ``last.ckpt``)
    or for a checkpoint file inside one."""
    source = Path(source).resolve()
    if source.is_file():
        run_dir = next((p for p in source.parents if (p / ".hydra" / "config.yaml").is_file()), None)
        if run_dir is None:
            raise FileNotFoundError(f"{source}: no .hydra/config.yaml in any folder above the checkpoint")
        return run_dir, source
    if not (source / ".hydra" / "config.yaml").is_file():
        raise FileNotFoundError(f"{source}: not a run directory (no .hydra/config.yaml)")
    record = read_result(source)
    best = Path(record.best_checkpoint) if record and record.best_checkpoint else None
    for candidate in (best, source / CHECKPOINT_DIR / "last.ckpt"):
        if candidate is not None and candidate.is_file():
            return source, candidate
    raise FileNotFoundError(f"{source}: no best checkpoint in result.json and no {CHECKPOINT_DIR}/last.ckpt")


def restore(run_dir: Path, checkpoint: Path):
    """The run's strategy module, built from its config, with the checkpoint's weights; and the config."""
    cfg = load_run_config(run_dir / ".hydra" / "config.yaml")
    saved = load_tensors(checkpoint, "checkpoint")
    backbone = config.instantiate("model", cfg.model, img_size=cfg.data.image_size, pretrained=False, weights=None)
    module = config.instantiate("strategy", cfg.strategy, backbone=backbone,
                                num_classes=saved["hyper_parameters"]["num_classes"])
    module.load_state_dict(saved["state_dict"])
    return module.eval(), cfg


def export(source: str | Path, out: str | Path) -> Path:
    """Write the merged network of ``source`` (a run directory or a checkpoint) to ``out``; see the module docstring."""
    run_dir, checkpoint = locate(source)
    module, cfg = restore(run_dir, checkpoint)
    return save(module.export_network(), module.hparams, cfg, checkpoint, out)


def save(network: nn.Sequential, hparams, cfg, checkpoint: Path, out: str | Path, **extra) -> Path:
    """``torch.save`` the plain ``network`` of a run (its config ``cfg``, its module's ``hparams``) as ``load`` reads
    it, with ``extra`` plain values beside (WiSE-FT's ``wise_ft_alpha``)."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("_target_", None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": network.state_dict(), "model": model, "image_size": cfg.data.image_size,
                "num_classes": hparams.num_classes, "strategy": target_name(cfg.strategy), "checkpoint": str(checkpoint),
                "head": {"kind": hparams.head, "hidden": hparams.head_hidden, "dropout": hparams.head_dropout}, **extra}, out)
    return out


def load(path: str | Path) -> nn.Sequential:
    """The network ``export`` wrote, rebuilt from the file alone (eval mode)."""
    saved = load_tensors(path, "exported network")
    model = {**saved["model"], "pretrained": False, "weights": None}
    backbone = create_backbone(**model, img_size=saved["image_size"])
    head = saved["head"]
    network = nn.Sequential(OrderedDict(
        backbone=backbone, head=build_head(head["kind"], feature_width(backbone), saved["num_classes"], head["hidden"], head["dropout"])))
    network.load_state_dict(saved["state_dict"])
    return network.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tlexp-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a run directory (its best checkpoint) or a checkpoint inside one")
    parser.add_argument("out", help="the file to write (torch.save of a dict, see tlexp.export)")
    args = parser.parse_args(argv)
    try:
        out = export(args.source, args.out)
    except (FileNotFoundError, UntrustedFile) as error:
        print(f"tlexp-export: {error}", file=sys.stderr)
        return 2
    print(f"tlexp-export: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
