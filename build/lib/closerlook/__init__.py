"""closerlook: SGDR, warmup and distillation seen through mode connectivity and CCA."""
__version__ = "0.1.0"
