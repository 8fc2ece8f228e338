from tlexp.feature_cache import FeatureCache, resolve
from tlexp.module import TransferModule
from tlexp.stages import HEAD


class Frozen(TransferModule):
    """Feature extraction / linear probe: only the new head trains.

    ``cache_features`` (auto | true | false): compute the backbone's features once and train
    the head on them (see ``tlexp.feature_cache``), stored under ``cache_dir`` (None: memory).
    """

    def __init__(self, *args, cache_features: bool | str = "auto", cache_dir: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if cache_features is True:  # refuse early what the module alone can tell (augmentation: at setup)
            resolve(True, self.hparams.bn_policy, augment=False, backbone=self.backbone)
        self.hparams.cache_features = cache_features
        self.hparams.cache_dir = cache_dir

    def start_epochs(self):
        return {stage.name: 0 if stage.name == HEAD else None for stage in self.stages}

    def configure_callbacks(self):
        return [*super().configure_callbacks(),
                FeatureCache(self.hparams.cache_features, self.hparams.cache_dir, self.hparams.bn_policy)]
