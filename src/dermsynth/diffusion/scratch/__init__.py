"""The from-scratch families, trained by `dermsynth train`: "scratch" (a class-conditional pixel UNet) and "latent"
(the same UNet on the latents of an autoencoder trained first on the same images).

They share one trainer and one set of presets (the latent family's second stage *is* the pixel trainer run on
latents), so they live in one folder: ``config`` (settings, presets, model builders), ``train`` (the `train`
stage), ``objectives`` (losses and augmentation), ``autoencoder`` (the latent family's first stage),
``sampling`` (both families' pipelines and `generate` adapters) and ``reconstruct`` (real images through the
autoencoder: the decoder's ceiling, and validate's reconstruction control).
"""
