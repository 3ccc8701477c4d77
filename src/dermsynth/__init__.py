"""dermsynth: synthetic dermoscopy images with diffusion models, audited and validated on real classifiers.

Python API (each function is what the matching CLI command calls)::

    from dermsynth import prepare, PrepareConfig, load_prepared
    result = prepare(PrepareConfig(dataset="sample"), out="runs/prep")
    report = validate(ValidateConfig(real="runs/prep", synthetic=["runs/syn"]), out="runs/val")
"""

from dermsynth.config import PrepareConfig
from dermsynth.data.dataset import PreparedDataset, load_prepared
from dermsynth.data.prepare import PrepareResult, prepare
from dermsynth.errors import DermsynthError
from dermsynth.evaluate.config import ValidateConfig

__version__ = "0.1.0"

__all__ = ["DermsynthError", "PrepareConfig", "PrepareResult", "PreparedDataset", "ValidateConfig", "__version__",
           "load_prepared", "prepare", "validate"]


def __getattr__(name: str):
    # Lazy: the validation stage imports torch, which `import dermsynth` and `dermsynth --help` must not.
    if name == "validate":
        from dermsynth.evaluate.validate import validate

        return validate
    raise AttributeError(f"module 'dermsynth' has no attribute {name!r}")
