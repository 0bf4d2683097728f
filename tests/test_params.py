"""The parameter table is the one truth: an initialised model and a transformers checkpoint both match it.

Four tiny architectures cover q/k/v bias on and off and tied and untied heads; the checkpoints are written by
transformers itself (torch), so the HF side is independent of our table.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import rrm_jax
from hf_reference import TINY_CONFIGS, hf_config, random_hf_model, save, torch  # noqa: F401  (skips without torch)
from rrm_jax.core.config import ModelConfig
from rrm_jax.core.hf_io import CheckpointReader
from rrm_jax.core.params import PARAMS, param_axes, param_name, param_shapes, params_of


def _path_names(path) -> list[str]:
    return [getattr(k, "key", getattr(k, "name", None)) for k in path]


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_initialised_model_is_what_the_table_says(name):
    model = rrm_jax.init(hf_config(**TINY_CONFIGS[name]), seed=0)
    cfg = model.config
    leaves = {param_name(p): (p, leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(model.state)}
    # exactly the entries this config has: biases only with qkv_bias, a head only when untied
    assert set(leaves) == set(params_of(cfg)) == set(param_shapes(cfg))
    assert ("q_bias" in leaves) == cfg.qkv_bias and ("lm_head" in leaves) == (not cfg.tie_word_embeddings)
    for pname, (path, leaf) in leaves.items():
        spec = PARAMS[pname]
        assert leaf.shape == spec.shape(cfg) == param_shapes(cfg)[pname], pname
        assert param_axes(path) == spec.logical_axes and len(spec.logical_axes) == leaf.ndim, pname
        # stacked parameters live in the scanned submodule, with one slice per layer
        assert ("layers" in _path_names(path)) == spec.stacked, pname
        if spec.stacked:
            assert leaf.shape[0] == cfg.num_layers
        values = np.asarray(leaf)
        if spec.init.__name__ == "ones":
            assert np.all(values == 1), pname
        else:
            assert abs(values.std() - 0.02) < 0.005 and abs(values.mean()) < 0.01, pname


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_every_hf_tensor_is_one_table_entry(name, tmp_path):
    hf = random_hf_model(hf_config(**TINY_CONFIGS[name], num_hidden_layers=2), seed=3)
    path = save(hf, tmp_path)
    cfg = ModelConfig.from_json(path / "config.json")
    reader = CheckpointReader(path)
    keys = set(reader.keys())
    assert keys == set(hf.state_dict()) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set())

    # which (entry, layer) of the whole table names each HF key, whatever the config
    owners: dict[str, list[tuple[str, int | None]]] = {}
    for pname, spec in PARAMS.items():
        for layer in range(cfg.num_layers) if spec.stacked else [None]:
            owners.setdefault(spec.hf_name(layer), []).append((pname, layer))
    for key in keys:
        assert len(owners.get(key, [])) == 1, (key, owners.get(key))
    # and this config's entries ask for exactly the checkpoint's tensors
    wanted = {
        spec.hf_name(layer)
        for spec in params_of(cfg).values()
        for layer in (range(cfg.num_layers) if spec.stacked else [None])
    }
    assert wanted == keys

    for key in keys:
        [(pname, layer)] = owners[key]
        spec, raw = PARAMS[pname], reader.get(key)
        ours = spec.to_ours(raw, cfg)
        assert ours.shape == (spec.shape(cfg)[1:] if spec.stacked else spec.shape(cfg)), key
        np.testing.assert_array_equal(spec.to_hf(ours, cfg), raw)
