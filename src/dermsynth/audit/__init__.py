"""The `audit` stage: fidelity of synthetic images (FID, KID, precision/recall, density/coverage, always beside a
real-vs-real reference) and memorization of training images (nearest real training image of every synthetic one)."""
