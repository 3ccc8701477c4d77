"""Diffusion models: training, loading and sampling.

From scratch: ``scratch`` (config, presets, UNet and noise schedule), ``train_scratch`` (the `train` stage),
``sampling`` (class-conditional pipeline with classifier-free guidance), ``threads``. Shared by every family:
``families`` (model folders by ``dermsynth_model.json`` family), ``generate`` (the `generate` stage), ``qc``,
``schedulers``, ``grid``. Stable Diffusion fine-tuning and sampling live in the ``sd_*`` modules.
"""
