"""spire-rt: a deployment runtime for SPIRE, text-prompted diffusion image restoration."""

__version__ = "0.1.0"
