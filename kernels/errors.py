"""Errors raised by the kernel wrappers."""

from __future__ import annotations


class KernelInputError(ValueError):
    """An input has the wrong shape, dtype, device, layout or value.

    The message names the argument, what was expected and what was given.
    """


class KernelUnavailableError(RuntimeError):
    """The CUDA kernels were asked for but cannot run here (no CuPy, no CUDA device).

    The message says what to install, or how to ask for the torch reference instead.
    """
