"""tlexp's Hydra launchers: ``ray_launcher.RayLauncher`` (``hydra/launcher=ray``), named by ``_target_`` in
``conf/hydra/launcher/ray.yaml``."""
