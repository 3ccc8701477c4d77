"""Tiny inputs for dermsynth's tests and benchmarks: prepared folders and stand-in datasets (``smoke_data``), a
random-weight Stable Diffusion built locally (``tiny_sd``) and study configs that run in seconds (``studies``).
One importable place, so that tests and benchmarks share them without importing each other."""
