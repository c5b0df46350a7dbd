# Copyright 2024 HuggingFace Inc.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

# ---------------------------------------------------------------------------------------------------
# Copied for compat_patches (record "transformers-rope-ignore-keys") from
#   repository: https://github.com/huggingface/transformers
#   file:       tests/utils/test_modeling_rope_utils.py
#   commit:     e42e4a43c16b458045aa7b0f721cfe4015680880 (the stored snapshot of main that carries
#               PR 46142, https://github.com/huggingface/transformers/pull/46142, released in 5.10.1;
#               the transformers sdists do not ship tests/utils/, so no release tarball has the file)
# PR 46142 added `test_convert_rope_params_to_dict_with_list_ignore_keys` (the regression test of
# issue 46121, marked `upstream_regression` below). The "cases around it" are its neighbours in the
# same class that exercise the same code without torch: `get_config_with_rope_parameters`,
# `test_rope_validation`, `test_rope_bad_layer_types`,
# `test_yarn_original_original_max_position_embeddings_validation`. Test bodies are verbatim.
# Adapted, and why:
#   * `RopeTest(unittest.TestCase)` -> `TestRope(_UnittestAssertions)`: pytest cannot parametrize
#     unittest.TestCase methods, and tests/upstream/conftest.py runs every test in two modes
#     ([patched] / [unpatched]); the self.assert* methods come from a unittest.TestCase instance, so
#     the bodies are unchanged. Renamed so that pytest's default `Test*` class pattern collects it.
#   * `@parameterized.expand([...])` -> `@pytest.mark.parametrize(...)`, same cases, same order (no
#     `parameterized` dependency).
#   * `@require_torch` and `transformers.testing_utils` dropped: these config-level tests use no torch
#     (the RoPE matrix runs without torch); `ROPE_INIT_FUNCTIONS` is imported from its module, which
#     needs no torch. The torch-numeric tests of the upstream class are not copied (the fix does not
#     touch them).
#   * marks only, on `test_yarn_original_original_max_position_embeddings_validation`, which fails on
#     older releases with or without the patch (measured): before 5.0.0rc2 yarn's
#     `original_max_position_embeddings` was optional (no KeyError; every case fails); from 5.0.0rc2
#     to 5.8.1 the nested cases raise KeyError (`_validate_yarn_rope_parameters` read it from the
#     whole nested dict; transformers PR 45887, first released in 5.9.0). Strict xfail there, with
#     the exception type, so they must pass from 5.9.0 on and must keep failing as measured before.
#   * `PATCH` names the record whose fix this file checks, `UNPATCHED_RAISES` how the regression test
#     fails without it (TypeError `|` on 5.4 - 5.9; AssertionError, the attribute stays a list, before
#     5.4), `DIFFERS` where the patch deliberately does not give the 5.4+ attribute API (see the
#     record's `differences`); all read by tests/upstream/conftest.py.
# ---------------------------------------------------------------------------------------------------


import logging as stdlib_logging
import unittest

import pytest

pytest.importorskip("transformers")

from transformers import Gemma3TextConfig, LlamaConfig  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

from compat_patches.core.versions import in_range, installed_version  # noqa: E402

PATCH = "transformers-rope-ignore-keys"
UNPATCHED_RAISES = (AssertionError, TypeError)
# Before 5.4 the ignore-keys are a keyword argument and no config stores the attribute the upstream
# test asserts on; the patch coerces the argument and leaves the attribute alone (record.differences).
DIFFERS = {"transformers": "<5.4.0.dev0"}



def _yarn_release_marks(is_nested):
    """How the yarn neighbour test fails on older releases, patch or not (see the header)."""
    version = installed_version("transformers")
    if in_range(version, "<5.0.0rc2"):
        return pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
            "before 5.0.0rc2 yarn's original_max_position_embeddings is optional; unrelated to the patch"))
    if is_nested and in_range(version, "<5.9.0"):
        return pytest.mark.xfail(strict=True, raises=KeyError, reason=(
            "before 5.9.0 yarn validation reads original_max_position_embeddings from the whole nested "
            "rope_parameters (transformers PR 45887); unrelated to the patch"))
    return ()


class _UnittestAssertions:
    """unittest's assert* methods for a plain pytest class (see the header)."""

    _case = unittest.TestCase()

    def __getattr__(self, name):
        if name.startswith("assert"):
            return getattr(self._case, name)
        raise AttributeError(name)


class TestRope(_UnittestAssertions):
    def get_config_with_rope_parameters(
        self, rope_params: dict, is_nested: bool = False, same_rope_per_layer: bool = False
    ):
        if same_rope_per_layer and not is_nested:
            raise ValueError(
                "Cannot use same RoPE params per layer when the config doesn't have layer types. Set `is_nested=True`."
            )

        if is_nested:
            config = Gemma3TextConfig()
            config.layer_types = ["full_attention", "sliding_attention"]
            config.rope_parameters = {
                "full_attention": rope_params,
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}
                if not same_rope_per_layer
                else rope_params,
            }
        else:
            config = LlamaConfig()
            config.layer_types = None
            config.rope_parameters = rope_params
        return config

    @pytest.mark.parametrize(
        "is_nested, same_rope_per_layer",
        [
            (True, True),
            (True, False),
            (False, False),
        ],
    )
    def test_rope_validation(self, is_nested: bool, same_rope_per_layer: bool):
        all_rope_types = ROPE_INIT_FUNCTIONS.keys()

        # The base config is always valid (default RoPE)
        config = self.get_config_with_rope_parameters(
            rope_params={"rope_type": "default", "rope_theta": 10000.0},
            is_nested=is_nested,
            same_rope_per_layer=same_rope_per_layer,
        )
        config.validate_rope()

        # If we explicitly set the other (non-default) RoPE types with only rope_theta,
        # validation should fail because required keys are missing (e.g. factor, short_factor)
        for rope_type in all_rope_types:
            # "default.proportional" is always valid with just rope_theta in keys
            if rope_type in ["default", "proportional"]:
                continue
            config = self.get_config_with_rope_parameters(
                rope_params={"rope_type": rope_type, "rope_theta": 10000.0},
                is_nested=is_nested,
                same_rope_per_layer=same_rope_per_layer,
            )
            with self.assertRaises(KeyError):
                config.validate_rope()

        # Parameters are exclusive to their own RoPE type, and should raise an exception if incorrectly passed
        valid_param_mapping = {
            "factor": ["linear", "dynamic", "yarn", "longrope"],
            "attention_factor": ["yarn", "longrope"],
            "beta_fast": ["yarn"],
            "beta_slow": ["yarn"],
            "short_factor": ["longrope"],
            "long_factor": ["longrope"],
        }
        for rope_type in all_rope_types:
            # "default.proportional" is always valid with just rope_theta in keys
            if rope_type in ["default", "proportional"]:
                continue
            for param, valid_rope_types in valid_param_mapping.items():
                # Set `param` with a dummy value -- we want to test the dict key
                config = self.get_config_with_rope_parameters(
                    rope_params={"rope_type": rope_type, "rope_theta": 10000.0, param: True},
                    is_nested=is_nested,
                    same_rope_per_layer=same_rope_per_layer,
                )
                if rope_type in valid_rope_types:
                    continue
                else:
                    with self.assertRaises(KeyError):
                        config.validate_rope()

        # Any other parameters passed to RoPE will raise a warning that a particular key is not used
        # But sometimes we can have model-specific RoPE kwargs and bypass warning with `ignore_keys`
        config.ignore_keys_at_rope_validation = {"mrope_sections"}  # e,g in Qwen2-VL
        config = self.get_config_with_rope_parameters(
            rope_params={"rope_type": "default", "rope_theta": 10000.0, "mrope_sections": True},
            is_nested=is_nested,
            same_rope_per_layer=same_rope_per_layer,
        )
        config.validate_rope()

        with self.assertLogs("transformers.modeling_rope_utils", level="WARNING") as logs:
            config.ignore_keys_at_rope_validation = set()
            config.validate_rope()
            self.assertEqual(len(logs.output), 1 if not same_rope_per_layer else 2)
            self.assertIn("mrope_sections", logs.output[0])
            # Raise a warning for each existing layer-type
            if same_rope_per_layer:
                self.assertIn("mrope_sections", logs.output[1])

    def test_rope_bad_layer_types(self):
        config = LlamaConfig()

        config.layer_types = ["full", "sliding"]
        config.rope_parameters = {"rope_type": "default", "rope_theta": 10000}
        # Never raises an error, prob for BC?
        # with self.assertRaises(ValueError):
        #     config.validate_rope()

    @pytest.mark.parametrize(
        "is_nested, same_rope_per_layer",
        [
            pytest.param(True, True, marks=_yarn_release_marks(True)),
            pytest.param(True, False, marks=_yarn_release_marks(True)),
            pytest.param(False, False, marks=_yarn_release_marks(False)),
        ],
    )
    def test_yarn_original_original_max_position_embeddings_validation(
        self, is_nested: bool, same_rope_per_layer: bool
    ):
        """Tests that models with no/bad `original_max_position_embeddings` raise a warning"""
        # good rope config: has a factor AND original_max_position_embeddings -> no warnings
        config = Gemma3TextConfig() if is_nested else LlamaConfig()
        rope_params = {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 2.0,
            "original_max_position_embeddings": int(config.max_position_embeddings / 2.0),
        }
        config = self.get_config_with_rope_parameters(
            rope_params=rope_params,
            is_nested=is_nested,
            same_rope_per_layer=same_rope_per_layer,
        )
        with self.assertRaises(AssertionError):  # confirm that no warnings are thrown
            with self.assertLogs("transformers.modeling_rope_utils", level="WARNING") as logs:
                config.validate_rope()

        # bad rope config, no `original_max_position_embeddings` -> raise error
        rope_params = {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 2.0,
        }
        config = self.get_config_with_rope_parameters(
            rope_params=rope_params,
            is_nested=is_nested,
            same_rope_per_layer=same_rope_per_layer,
        )
        with self.assertRaises(KeyError):
            config.validate_rope()

        # bad rope config, bad implicit factor -> warning
        rope_params = {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 2.0,
            "original_max_position_embeddings": 1,
        }
        config = self.get_config_with_rope_parameters(
            rope_params=rope_params,
            is_nested=is_nested,
            same_rope_per_layer=same_rope_per_layer,
        )
        stdlib_logging.Logger.warning_once.cache_clear()
        with self.assertLogs("transformers.modeling_rope_utils", level="WARNING") as logs:
            config.validate_rope()
            self.assertGreaterEqual(len(logs.output), 1)
            self.assertIn("implicit factor", logs.output[0])

    @pytest.mark.upstream_regression
    @pytest.mark.parametrize(
        "is_nested, same_rope_per_layer",
        [
            (True, True),
            (True, False),
            (False, False),
        ],
    )
    def test_convert_rope_params_to_dict_with_list_ignore_keys(self, is_nested: bool, same_rope_per_layer: bool):
        # Regression test for #46121: `ignore_keys_at_rope_validation` becomes a list when loaded from a config.json
        # (JSON has no set type). `convert_rope_params_to_dict` used to do `list | set` and crash with
        # TypeError when `partial_rotary_factor` was also set.
        config = LlamaConfig(partial_rotary_factor=0.25)
        config.ignore_keys_at_rope_validation = ["mrope_section", "mrope_interleaved"]

        config.convert_rope_params_to_dict(partial_rotary_factor=0.25)

        self.assertIsInstance(config.ignore_keys_at_rope_validation, set)
        self.assertEqual(
            config.ignore_keys_at_rope_validation,
            {"mrope_section", "mrope_interleaved", "partial_rotary_factor"},
        )

        # Round-trip through from_dict to mimic the JSON-deserialized path that triggered this in production.
        cfg_dict = config.to_dict()
        cfg_dict["ignore_keys_at_rope_validation"] = ["mrope_section", "mrope_interleaved"]
        reloaded = LlamaConfig.from_dict(cfg_dict)
        reloaded.convert_rope_params_to_dict(partial_rotary_factor=0.25)
        self.assertIsInstance(reloaded.ignore_keys_at_rope_validation, set)

        # Also accept None (the class-level attribute can be cleared on an instance).
        config_none = LlamaConfig(partial_rotary_factor=0.25)
        config_none.ignore_keys_at_rope_validation = None
        config_none.convert_rope_params_to_dict(partial_rotary_factor=0.25)
        self.assertEqual(config_none.ignore_keys_at_rope_validation, {"partial_rotary_factor"})
