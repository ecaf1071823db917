"""Training: ``stage0`` (segmentation: the Stage-0 baseline and Stage 2, which adds online
synthesis), ``stage1`` (the adversarial difference-map generator), on the shared step-indexed
``data`` and ``run`` scaffolding (processes, run folder, resume, logs)."""
