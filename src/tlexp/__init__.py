"""tlexp: measured transfer-learning experiments on timm backbones with Lightning and Hydra."""

__version__ = "0.1.0"


import hashlib

from omegaconf import OmegaConf

JOB_DIR_BYTES = 200
"""A job directory's name at most this long (file systems allow 255 bytes per name)."""


def _mixed_precision() -> str:
    from tlexp.acceleration import mixed_precision  # torch only when a config asks

    return mixed_precision()


# ``${tlexp_mixed_precision:}`` (conf/trainer/gpu.yaml): registered on import, before any config resolves
if not OmegaConf.has_resolver("tlexp_mixed_precision"):
    OmegaConf.register_new_resolver("tlexp_mixed_precision", _mixed_precision)


def job_dir(overrides: str) -> str:
    """A multirun job's directory name from its overrides (``hydra.job.override_dirname``): one directory, also
    when a value is a path (``/`` becomes ``%2F``), and within the file-name limit (a long name keeps its start
    and a hash of the whole)."""
    name = overrides.replace("%", "%25").replace("/", "%2F") or "run"
    if len(name.encode()) <= JOB_DIR_BYTES:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:12]
    return name.encode()[:JOB_DIR_BYTES - 13].decode(errors="ignore") + "-" + digest


# ``${tlexp_job_dir:${hydra.job.override_dirname}}`` (conf/hydra/default.yaml: hydra.sweep.subdir)
if not OmegaConf.has_resolver("tlexp_job_dir"):
    OmegaConf.register_new_resolver("tlexp_job_dir", job_dir)
