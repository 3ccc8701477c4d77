"""dermsynth: synthetic dermoscopy images with diffusion models, audited and validated on real classifiers.

Python API (each function is what the matching CLI command calls)::

    from dermsynth import prepare, PrepareConfig, load_prepared
    result = prepare(PrepareConfig(dataset="sample"), out="runs/prep")
    model = train("runs/prep", "runs/model", preset="cpu-fast")
    synthetic = generate("runs/model", "runs/syn", balance="runs/prep")
    report = validate(ValidateConfig(real="runs/prep", synthetic=["runs/syn"]), out="runs/val")
"""

from dermsynth.data.config import PrepareConfig
from dermsynth.data.dataset import PreparedDataset, load_prepared
from dermsynth.data.prepare import PrepareResult, prepare
from dermsynth.errors import DermsynthError
from dermsynth.evaluate.config import ValidateConfig
from dermsynth.version import __version__

__all__ = ["DermsynthError", "PrepareConfig", "PrepareResult", "PreparedDataset", "TrainConfig", "ValidateConfig",
           "__version__", "generate", "load_prepared", "prepare", "reconstruct", "train", "validate"]

# Lazily imported (they import torch, which `import dermsynth` and `dermsynth --help` must not).
_LAZY = {
    "train": "dermsynth.diffusion.scratch.train",
    "generate": "dermsynth.diffusion.generate",
    "reconstruct": "dermsynth.diffusion.scratch.reconstruct",
    "TrainConfig": "dermsynth.diffusion.scratch.config",
}


def __getattr__(name: str):
    # Lazy: the validation stage imports torch, which `import dermsynth` and `dermsynth --help` must not.
    if name == "validate":
        from dermsynth.evaluate.validate import validate

        return validate
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dermsynth' has no attribute {name!r}")
