"""dermsynth: synthetic dermoscopy images with diffusion models, audited and validated on real classifiers.

Python API (each function is what the matching CLI command calls)::

    from dermsynth import prepare, PrepareConfig, load_prepared
    result = prepare(PrepareConfig(dataset="sample"), out="runs/prep")
"""

from dermsynth.config import PrepareConfig
from dermsynth.data.dataset import PreparedDataset, load_prepared
from dermsynth.data.prepare import PrepareResult, prepare
from dermsynth.errors import DermsynthError

__version__ = "0.1.0"

__all__ = ["DermsynthError", "PrepareConfig", "PrepareResult", "PreparedDataset", "__version__", "load_prepared",
           "prepare"]
