"""``rrm-jax plan RECIPE --topology v5p-64``: a recipe's programs compiled for a TPU slice ahead of time (libtpu,
no TPU needed), with per-chip memory against HBM, FLOPs, a roofline step time and MFU."""

from rrm_jax.plan.run import fits_line, plan

__all__ = ["plan", "fits_line"]
