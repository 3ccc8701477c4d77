"""The cascade family: a low-resolution pixel model (the scratch family's) followed by a conditional diffusion
super-resolution stage that generates the fine texture (config.py, train.py, sampling.py)."""
