"""A blinded reader study: can clinicians tell synthetic lesions from real ones?

``build`` makes the blinded image set and its answer key, ``page`` the self-contained reader page, ``serve`` the
same page for a lab (answers kept per reader in SQLite), ``score`` the readers' accuracy, agreement and the
convincing synthetic images (beside their nearest real training image's similarity)."""
