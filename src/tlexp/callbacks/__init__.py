"""Lightning callbacks of tlexp."""

from tlexp.callbacks.divergence import Diverged, DivergenceGuard
from tlexp.callbacks.finetuning import FineTuning
from tlexp.callbacks.heartbeat import Heartbeat
from tlexp.callbacks.interruption import Interrupted, Interruption
from tlexp.callbacks.layer_movement import LayerMovement
from tlexp.callbacks.replicas import ReplicaCheck
from tlexp.callbacks.reproducibility import EpochSeeder
from tlexp.callbacks.timing import EpochTimer

__all__ = ["Diverged", "DivergenceGuard", "FineTuning", "EpochSeeder", "EpochTimer", "Heartbeat", "Interrupted", "Interruption",
           "LayerMovement", "ReplicaCheck"]
