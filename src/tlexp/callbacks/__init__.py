"""Lightning callbacks of tlexp."""

from tlexp.callbacks.finetuning import FineTuning
from tlexp.callbacks.replicas import ReplicaCheck
from tlexp.callbacks.reproducibility import EpochSeeder
from tlexp.callbacks.timing import EpochTimer

__all__ = ["FineTuning", "EpochSeeder", "EpochTimer", "ReplicaCheck"]
