"""LightningDataModules: one per data source, all on ``TransferDataModule``."""

from tlexp.data.base import TransferDataModule
from tlexp.data.loading import Split
from tlexp.data.digits import Digits
from tlexp.data.fashion_mnist import FashionMNIST
from tlexp.data.hf import HuggingFace
from tlexp.data.image_folder import ImageFolder
from tlexp.data.synthetic import Synthetic
from tlexp.data.torchvision_source import Torchvision

__all__ = ["Split", "TransferDataModule", "Digits", "FashionMNIST", "HuggingFace", "ImageFolder", "Synthetic", "Torchvision"]
