"""Attention kernels that can be differentiated twice (and in forward mode) during a measurement."""

from __future__ import annotations

from contextlib import AbstractContextManager

from torch.nn.attention import SDPBackend, sdpa_kernel


def math_attention() -> AbstractContextManager[None]:
    """Context manager that restricts ``F.scaled_dot_product_attention`` to its math backend.

    The fused kernels (flash and memory-efficient attention on CUDA, the flash kernel on CPU) implement
    one backward pass only: no double backward, no forward-mode AD. The matrix-free solver computes
    ``J v`` by a double backward and the paper's conditional metric by a JVP, so a network with attention
    must run on the math backend while it is measured (the kernel is chosen when the forward runs, so
    only the forward pass needs to be inside). The previous backend selection is restored on exit, also
    when an exception is raised; training outside the context keeps the fused kernels.

    Example:
        >>> with math_attention():
        ...     out = unet(x_t, t).sample  # double-differentiable
    """
    return sdpa_kernel(SDPBackend.MATH)
