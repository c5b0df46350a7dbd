"""Patched transformers callables pickle and copy as the originals do (issue 13, defect 4).

Ray and multiprocessing pickle references to functions; configs are deep-copied with their bound
methods. Seen on 5.2.0 before the fix: `pickle.dumps(LlamaConfig._check_received_keys)` raised
`NotImplementedError: object proxy must define __reduce__()`, and so did copy / deepcopy.
"""

import copy
import multiprocessing
import pickle

import pytest

import compat_patches

NAME = "transformers-rope-ignore-keys"
pytestmark = pytest.mark.requires(transformers=">=5.0.0rc0,<=5.5.0.dev0")  # both targets wrapped


def test_pickle_copy_and_spawn_of_patched_config_methods():
    from transformers import LlamaConfig

    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME]
        static = LlamaConfig._check_received_keys
        assert pickle.loads(pickle.dumps(static)) == static
        config = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                             num_attention_heads=2, intermediate_size=64)
        bound = config.convert_rope_params_to_dict
        assert pickle.loads(pickle.dumps(bound)).__self__.to_dict() == config.to_dict()
        assert copy.copy(bound).__self__ is config
        deep = copy.deepcopy({"f": bound})["f"]
        assert deep.__self__ is not config and deep.__self__.to_dict() == config.to_dict()
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            # the reference crosses; the child resolves it in its own (unpatched) transformers
            keys = {"rope_type", "rope_theta"}
            assert pool.apply(static, ("default", set(keys), keys, None, set())) is None
