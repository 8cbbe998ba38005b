"""Triton kernels for the sparse rank path, with their PyTorch references (imported as ``rankmix.kernels``)."""
