# Copyright 2018 the HuggingFace Inc. team.
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
# For compat_patches (record "transformers-trainer-token-count"), from
#   repository: https://github.com/huggingface/transformers
#   file:       tests/trainer/test_trainer.py
#   PR:         45349, https://github.com/huggingface/transformers/pull/45349 ("Fix #45305 + add
#               regression test GAS", merged 2026-04-10; released in 5.5.4 and 5.6.0)
# RECONSTRUCTED, not a verbatim copy: the stored copies of tests/trainer/test_trainer.py that could be
# read here predate the PR or postdate PR 45434 (which folded the test into other grad-acc tests), and
# the whole repository is too large to fetch. The PR's diff is known from its review threads and from
# PR 45434's diff, which removed it: the test name, docstring, the comment, both assertions and their
# messages below are verbatim from those excerpts; the model / arguments / dataset around them are
# rebuilt (a tiny LlamaForCausalLM from a config, as the PR's comment says; CPU; no hub).
# The second defect of the record (Trainer's count of labels instead of targets, PR 46204) came with
# no regression test upstream (the PR relied on the existing hub-dependent grad-acc tests).
# Where it runs: the record's range is 5.0.0rc0 - 5.10.1.dev0 (the count), but accelerate's second
# division exists on 5.2.0 - 5.5.3 only: 5.0.0rc0 - 5.1.x build no plugin and 5.5.4+ carry PR 45349, so
# there this test passes without the patch (measured). UPSTREAM_HAS_FIX names those releases: the
# [unpatched] mode must pass there (tests/upstream/conftest.py), and must fail on 5.2.0 - 5.5.3.
# DIFFERS: the record removes accelerate's second division per training step (a step whose compute_loss
# is an unknown override keeps it, as unpatched: upstream's fix doubles such an override's gradient where
# it ignores num_items_in_batch), so the accelerator still reports the accumulation steps after
# Trainer(): this test's second assertion fails in [patched] mode on 5.2.0 - 5.5.3, strictly. The
# gradient itself is tested by
# tests/patches/transformers/test_trainer_token_count.py; transformers' own gradient-accumulation tests
# run beside this one (test_trainer_gradient_accumulation.py).
# ---------------------------------------------------------------------------------------------------

import pytest

PATCH = "transformers-trainer-token-count"
DIFFERS = {"transformers": ">=5.2.0,<5.5.4"}
# no plugin before 5.2.0, PR 45349 from 5.5.4: the releases where Trainer does not leak the steps
UPSTREAM_HAS_FIX = {"transformers": ">=5.0.0rc0,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0,!=5.5.1,!=5.5.2,!=5.5.3"}

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")


class _TokenDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        ids = [(i + j) % 32 for j in range(8)]
        return {"input_ids": ids, "labels": ids}


@pytest.mark.upstream_regression
def test_gradient_accumulation_steps_not_leaked_to_accelerator(tmp_path):
    """
    Regression test: the Trainer should not pass its gradient_accumulation_steps
    to the Accelerator. When num_items_in_batch is active (model_accepts_loss_kwargs=True),
    Accelerate's backward() would spuriously divide loss by GAS, resulting in
    gradients that are GAS× too small.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        gradient_accumulation_steps=4,
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_TokenDataset(),
    )
    # LlamaForCausalLM.forward() accepts **kwargs, so this must be True
    assert trainer.model_accepts_loss_kwargs, (
        "Test requires a model with model_accepts_loss_kwargs=True (like modern HF models)."
    )
    assert trainer.accelerator.gradient_accumulation_steps == 1, (
        "Trainer should not leak gradient_accumulation_steps to the Accelerator. "
    )
