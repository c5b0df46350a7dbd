"""The Trainer-loss records over two processes: torchrun, two CPU ranks, gloo, DDP,
``average_tokens_across_devices=True`` and unequal token counts per rank.

Each rank takes one optimizer step (per_device_train_batch_size=1, gradient_accumulation_steps=2) over
its half of four examples of unequal length. Trainer gathers the window's token count over the ranks
(``_get_num_items_in_batch``), multiplies each rank's loss by the world size and DDP averages the
gradients: the right result is, on every rank, the gradient of the token mean over all four examples
(summed cross-entropy over every target of both ranks / their number). The stale-flag record counts
through Trainer's own ``_get_num_items_in_batch`` (the gather included, on every rank) and hands the
all-reduced count to the loss with the flag True, so Trainer's world-size factor applies too.

Measured per affected release, unpatched and patched (both records): Qwen2.5-VL (stale flag, every
release) and Llama (Trainer's count, 5.0.0rc0 - 5.10.0).
"""

import json
import sys

import pytest

from compat_patches.core.versions import installed_version

from ...process_fakes import clean_env, run

SCRIPT = r'''
import json, os, sys, tempfile
sys.path.insert(0, os.environ["REPO"])
import torch
import torch.distributed as dist
import compat_patches
from transformers import Trainer, TrainerCallback, TrainingArguments
from tests.patches.transformers import _grad_accum as ga, _loss_kwargs_models as models

EXAMPLES = (
    (list(range(3, 13)), [-100, -100] + list(range(5, 10)) + [-100, -100, -100]),
    (list(range(13, 17)), [-100, -100, 15, 16]),
    (list(range(5, 9)), list(range(5, 9))),
    (list(range(3, 15)), list(range(3, 15))),  # label position 0 set: Trainer's count over-counts it (<= 5.10.0)
)
build = {"qwen2_5_vl": models.qwen2_5_vl, "llama": ga.tiny_llama}[sys.argv[2]]
names = sys.argv[3].split(",") if sys.argv[3] else []


SEEN = []


class Dataset(torch.utils.data.Dataset):
    def __len__(self):
        return len(EXAMPLES)

    def __getitem__(self, index):
        SEEN.append(index)
        ids, labels = EXAMPLES[index]
        return {"input_ids": ids, "labels": labels}


class Grab(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        Grab.grads = {n.removeprefix("module."): p.grad.detach().clone() for n, p in model.named_parameters()
                      if p.grad is not None}


model = build()
reference = ga.reference_gradient(model, EXAMPLES)
with tempfile.TemporaryDirectory() as folder:
    args = TrainingArguments(output_dir=folder, per_device_train_batch_size=1, gradient_accumulation_steps=2,
                             max_steps=1, learning_rate=0.0, max_grad_norm=0.0, report_to=[], save_strategy="no",
                             logging_strategy="no", use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
                             seed=0, average_tokens_across_devices=True, ddp_backend="gloo")
    with compat_patches.patched(*names) if names else open(os.devnull) as _:
        trainer = Trainer(model=model, args=args, train_dataset=Dataset(), callbacks=[Grab()])
        trainer.train()
ratio, error = ga.compare(Grab.grads, reference)
rank = dist.get_rank() if dist.is_initialized() else -1
world = dist.get_world_size() if dist.is_initialized() else 1
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump({"ratio": ratio, "error": error, "world": world, "seen": sorted(SEEN),
               "targets": ga.target_count([EXAMPLES[i] for i in SEEN])}, f)
'''

STALE = "transformers-stale-loss-kwargs"
COUNT = "transformers-trainer-token-count"
WRONG, RIGHT = 0.05, 1e-5

pytestmark = [pytest.mark.slow, pytest.mark.requires(torch=">=2.1", transformers=">=5.0.0rc0", accelerate=">=1.1.0")]


def _two_ranks(tmp_path, model, names):
    import pathlib

    repo = pathlib.Path(__file__).resolve().parents[3]
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"out-{model}-{len(names)}"
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(script), str(out), model, ",".join(names)]
    result = run(command, clean_env(REPO=repo), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert all(rank["world"] == 2 for rank in ranks)
    # each rank trained on two of the four examples, none twice, with unequal token counts
    assert sorted(ranks[0]["seen"] + ranks[1]["seen"]) == [0, 1, 2, 3], ranks
    assert ranks[0]["targets"] != ranks[1]["targets"], ranks
    return ranks


# Llama: Trainer's own count (transformers-trainer-token-count, 5.0.0rc0 - 5.10.1.dev0); from 5.10.1
# it is right unpatched
@pytest.mark.parametrize("model", ["qwen2_5_vl", pytest.param("llama", marks=pytest.mark.requires(
    transformers=">=5.0.0rc0,<=5.10.1.dev0"))])
def test_two_ranks_average_tokens_across_devices(tmp_path, model):
    unpatched = _two_ranks(tmp_path, model, ())
    patched = _two_ranks(tmp_path, model, (STALE, COUNT))
    print(f"transformers {installed_version('transformers')} {model}: targets per rank "
          f"{[rank['targets'] for rank in patched]}; unpatched "
          + ", ".join(f"{rank['ratio']:.4f} ({rank['error']:.3g})" for rank in unpatched) + "; patched "
          + ", ".join(f"{rank['ratio']:.4f} ({rank['error']:.2g})" for rank in patched))
    for rank in unpatched:
        assert rank["error"] > WRONG, unpatched
    for rank in patched:
        assert rank["error"] < RIGHT, patched
