"""Skin-lesion classifiers, below both the audit (its feature CNN, C2ST) and validate (its runs): the classifier
registry (``models``), building, saving and loading them (``classifiers``), the shared transform
(``transforms``), training and selection (``training``), and the metrics (``metrics``)."""
