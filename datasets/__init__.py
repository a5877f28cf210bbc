"""Dataset readers/packers and the synthetic dataset (installed as ``x2datasets``)."""
