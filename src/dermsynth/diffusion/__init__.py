"""Diffusion models: training, loading and sampling, one folder per model family.

The core, shared by every family: ``harness`` (the training loop: budget, log, checkpoints with the whole loop
state, resume checks), ``checkpoints``, ``threads``, ``losses``, ``families`` (the family registry: model folders
by ``dermsynth_model.json`` family, and the ``ImageGenerator`` protocol), ``generate`` (the `generate` stage, which
configures a generator only through that protocol), ``training`` (`dermsynth train`'s presets, by the family that
trains them), ``generate_config``, ``qc``, ``schedulers``, ``grid``.

The families: ``scratch/`` (the pixel and latent families trained from scratch by `dermsynth train`), ``cascade/``
(a scratch pixel model as its base, then a super-resolution stage) and ``sd/`` (Stable Diffusion fine-tunes). A
family imports the core and the layers below, never another family except the one it is declared to build on
(the cascade on scratch); the core loads a family by the name registered in ``families`` and ``training``.
"""
