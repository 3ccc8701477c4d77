"""quiet_hf_libraries silences the Hugging Face libraries' bars and warnings and gives back what it found."""

from __future__ import annotations

import pytest
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from dermsynth.progress import quiet_hf_libraries

LIBRARIES = (diffusers_logging, transformers_logging)


# conftest sets HF_HUB_DISABLE_PROGRESS_BARS, so huggingface_hub warns when transformers turns its bar back on.
@pytest.mark.filterwarnings("ignore:Cannot enable progress bars")
@pytest.mark.parametrize("enabled_before", [True, False])
def test_quiet_hf_libraries_disables_both_bars_and_restores_them(enabled_before):
    found = [(module, module.is_progress_bar_enabled()) for module in LIBRARIES]
    level = diffusers_logging.get_verbosity()
    try:
        for module in LIBRARIES:
            (module.enable_progress_bar if enabled_before else module.disable_progress_bar)()
        diffusers_logging.set_verbosity_warning()
        with quiet_hf_libraries():
            assert not any(module.is_progress_bar_enabled() for module in LIBRARIES)
            assert diffusers_logging.get_verbosity() == diffusers_logging.ERROR
        assert [module.is_progress_bar_enabled() for module in LIBRARIES] == [enabled_before] * 2
        assert diffusers_logging.get_verbosity() == diffusers_logging.WARNING
        with pytest.raises(RuntimeError), quiet_hf_libraries():
            raise RuntimeError  # an error inside still restores
        assert [module.is_progress_bar_enabled() for module in LIBRARIES] == [enabled_before] * 2
    finally:  # other tests see the states this one found
        for module, enabled in found:
            (module.enable_progress_bar if enabled else module.disable_progress_bar)()
        diffusers_logging.set_verbosity(level)
