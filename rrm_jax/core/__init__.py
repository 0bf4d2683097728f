"""The bottom layer: the model config, the Qwen2 decoder, sharding, HF checkpoint I/O and the public loaders.

Nothing in ``core`` imports from another rrm_jax package (tests/test_layers.py keeps it so).
"""
