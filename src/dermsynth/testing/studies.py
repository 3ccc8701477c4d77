"""Tiny study configs (`dermsynth run`) for tests and benchmarks: every stage on settings that finish in seconds."""

from __future__ import annotations

TINY_STUDY = """
name: tiny end-to-end
prepare:
  dataset: sample
  max_images: 120
  preprocess: {image_size: 32}
train:
  settings:
    max_steps: 12
    max_minutes: null
    model: {image_size: 16, block_out_channels: [16, 32], attention_levels: [], attention_head_dim: 16,
            norm_num_groups: 8}
    sample_every: 12
    checkpoint_every: 6
    samples_per_class: 2
generate:
  per_class: 40
  steps: 3
  batch_size: 40
audit:
  classifier_epochs: 1
  positive_controls: 10
  kid_subsets: 3
validate:
  seeds: 2
  regimes: [real, hybrid:0.5]
  architecture: {hidden_sizes: [8, 16], embedding_size: 8, depths: [1, 1]}
  train: {epochs: 2}
  bootstrap: 200
"""
