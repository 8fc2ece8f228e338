"""The GPU path, run on the CPU: trainer=gpu composes with a mixed precision chosen from the device,
and bf16 autocast, channels_last and a compiled backbone train together without changing the checkpoint."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config
from test_finetuning import build

from tlexp import config
from tlexp.acceleration import Trainer, mixed_precision
from tlexp.errors import ConfigError
from tlexp.strategies import Full


def test_gpu_trainer_composes_with_the_device_precision(tmp_path):
    cfg = compose_config("trainer=gpu", f"paths.output_dir={tmp_path}")
    assert cfg.trainer.precision == mixed_precision() == "16-mixed"  # no GPU here: fp16 with a scaler would be chosen
    assert cfg.trainer.channels_last is True and cfg.trainer.compile is False
    config.check(cfg)


@pytest.mark.parametrize("value", ["fast", 1])
def test_bad_compile_names_the_key(tmp_path, value):
    with pytest.raises(ConfigError) as error:
        config.check(compose_config(f"trainer.compile={value}", f"paths.output_dir={tmp_path}"))
    assert error.value.key == "trainer.compile" and "inductor" in str(error.value)


@pytest.mark.slow
def test_bf16_channels_last_and_compiled_backbone_train_on_cpu(tmp_path):
    datamodule, module = build(Full)
    keys = set(module.state_dict())
    trainer = Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", channels_last=True, compile="eager",
                      max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, use_distributed_sampler=False, num_sanity_val_steps=0,
                      default_root_dir=tmp_path)
    trainer.fit(module, datamodule=datamodule)
    convs = [m.weight for m in module.backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert set(module.state_dict()) == keys  # compiled in place: checkpoints keep their names
    assert torch.isfinite(trainer.callback_metrics["train/loss"]) and "val/acc" in trainer.callback_metrics
