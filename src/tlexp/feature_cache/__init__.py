"""Backbone features computed once, for strategies that never train the backbone.

A frozen backbone in eval mode fed deterministic inputs is a constant function, so its
features can be computed once per split and the head trained on them: an epoch then costs
a pass of the head instead of a pass of the backbone. When that is equivalent, and what the
``cache_features`` setting does, is ``rules``; the key that names a split's features is
``key``; files and the lock that lets concurrent jobs compute a key once are ``store``;
swapping a datamodule's images for features is ``dataset``; ``callback`` does it at a
Trainer's setup.

The datasets of the datamodule are replaced by ``FeatureDataset``s of the same length, so its
seeded sampler gives every epoch the same order as an uncached run. Their batches are
``CachedFeatures``, which the datamodule leaves unnormalised; while they are in use the
callback sets ``on_cached_features`` on the module, which then sends its inputs to the head
only. The model is untouched: checkpoints hold the whole network.
"""

from tlexp.feature_cache.callback import FeatureCache
from tlexp.feature_cache.dataset import CachedFeatures, FeatureDataset, cache_datamodule, compute_features
from tlexp.feature_cache.key import cache_key, key_fields, weights_hash
from tlexp.feature_cache.rules import blockers, check_setting, resolve, stochastic_layers

__all__ = ["FeatureCache", "CachedFeatures", "FeatureDataset", "cache_datamodule", "compute_features", "cache_key",
           "key_fields", "weights_hash", "blockers", "check_setting", "resolve", "stochastic_layers"]
