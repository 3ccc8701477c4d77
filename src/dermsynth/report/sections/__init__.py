"""One module per section of the report; each reads its stage's outputs through the run folder."""
