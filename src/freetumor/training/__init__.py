"""Training loops: segmentation (Stage 0 baseline and, later, Stage 2) and synthesis (Stage 1)."""
