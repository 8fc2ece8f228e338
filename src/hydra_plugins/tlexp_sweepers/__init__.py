"""tlexp's Hydra sweepers, found by Hydra's plugin discovery in the ``hydra_plugins`` namespace package:
``optuna_sweeper.OptunaSweeper`` (``hparams_search=optuna``) and ``race_sweeper.RaceSweeper`` (``experiment=race``)."""
