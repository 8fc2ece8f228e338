"""Inputs computed once for the stages a run never trains: a layer above the LightningModule and the DataModule.

When the first backbone stages stay frozen through a whole run (``frozen``: all of them; ``partial``: its
``frozen_depth``; ``gradual``: those its schedule never reaches), BatchNorm is in eval mode and the inputs are
deterministic, their output is a fixed function of the image: it is computed once per image, stored, and the
remaining stages and the head train on it. At the top of the backbone this is the pooled features (the linear
probe trains the head alone on them); below it, the input of the first stage that trains.

``rules``: the settings (``strategy.cache_*``), the strategies served, when caching is equivalent; ``key``: what
names a split's cached inputs; ``store``: files and the lock that lets concurrent jobs compute a key once;
``boundary``: where the inputs enter the network, what is skipped, and the check that skipping reproduces it;
``dataset``: a split's inputs loaded or computed; ``callback``: ``FeatureCache``, which swaps them in for a Trainer
stage. The strategies know none of this: ``train`` attaches the callback from the strategy node's ``cache_*`` keys
(``callbacks_for``), and the module runs from the boundary through ``TransferModule.skipping``.
"""

from tlexp.feature_cache.boundary import Boundary
from tlexp.feature_cache.callback import FeatureCache, callbacks_for
from tlexp.feature_cache.dataset import FeatureDataset, compute_features, encode_in_batches, split_inputs
from tlexp.feature_cache.key import cache_key, key_fields, modules_hash, weights_hash
from tlexp.feature_cache.rules import SETTINGS, blockers, resolve, settings_of, stochastic_layers

__all__ = ["Boundary", "FeatureCache", "FeatureDataset", "compute_features", "encode_in_batches", "split_inputs", "cache_key",
           "key_fields", "modules_hash", "weights_hash", "SETTINGS", "blockers", "resolve", "settings_of",
           "stochastic_layers", "callbacks_for"]
