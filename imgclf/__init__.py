"""imgclf: a reproducible image-classification pipeline of DVC stages (one module per stage, over shared nouns)."""
