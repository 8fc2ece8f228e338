"""tlexp: measured transfer-learning experiments on timm backbones with Lightning and Hydra."""

__version__ = "0.1.0"


from omegaconf import OmegaConf


def _mixed_precision() -> str:
    from tlexp.acceleration import mixed_precision  # torch only when a config asks

    return mixed_precision()


# ``${tlexp_mixed_precision:}`` (conf/trainer/gpu.yaml): registered on import, before any config resolves
if not OmegaConf.has_resolver("tlexp_mixed_precision"):
    OmegaConf.register_new_resolver("tlexp_mixed_precision", _mixed_precision)
