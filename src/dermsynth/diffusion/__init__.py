"""Diffusion models: training, loading and sampling, one folder per model family.

The core, shared by every family: ``harness`` (the training loop: budget, log, checkpoints with the whole loop
state, resume checks), ``checkpoints``, ``threads``, ``losses``, ``families`` (the family registry: model folders
by ``dermsynth_model.json`` family, and the ``ImageGenerator`` protocol), ``generate`` (the `generate` stage, which
configures a generator only through that protocol), ``generate_config``, ``qc``, ``schedulers``, ``grid``.

The families: ``scratch/`` (the pixel and latent families trained from scratch by `dermsynth train`) and ``sd/``
(Stable Diffusion fine-tunes). A family imports the core and the layers below, never another family; the core
loads a family by the name registered in ``families``.
"""
