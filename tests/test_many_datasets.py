"""experiment=many_datasets composes offline: every dataset it sweeps is a torchvision classification
dataset the torchvision source accepts, and the composed config passes the checks."""

from __future__ import annotations

from conftest import CONF_DIR
from hydra import compose, initialize_config_dir

from tlexp import config
from tlexp.data.torchvision_source import classification_datasets


def test_many_datasets_composes_and_names_real_datasets(tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="test"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["experiment=many_datasets", f"paths.output_dir={tmp_path}"])
    names = cfg.hydra.sweeper.params["data.name"].split(",")
    assert len(names) >= 10 and set(names) <= set(classification_datasets())
    assert {"scratch", "frozen", "full"} <= set(cfg.hydra.sweeper.params.strategy.split(","))
    del cfg.hydra
    config.check(cfg)
