"""RefCOCO-family evaluation with the exact zero-shot protocol (docs/evaluation.md)."""
