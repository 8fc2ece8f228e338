"""tlexp: measured transfer-learning experiments on timm backbones with Lightning and Hydra."""

__version__ = "0.1.0"
