"""fsd: Feature Structure Distillation of BERT on GLUE (the core; imports neither Ray nor MLflow)."""

__version__ = "0.1.0"
