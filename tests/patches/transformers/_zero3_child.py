"""A real DeepSpeed ZeRO-3 from_pretrained (world size 1, CPU, gloo) of a tiny Qwen3.5 VL checkpoint
in the hub layout; prints how many parameters differ from the checkpoint. argv: DIR [patched]."""
import json
import os
import sys

os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", DS_ACCELERATOR="cpu")

import deepspeed  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers.integrations import HfDeepSpeedConfig  # noqa: E402

import compat_patches  # noqa: E402

NAME = "transformers-zero3-dropped-keys"
path, patched = sys.argv[1], sys.argv[2:] == ["patched"]
status = compat_patches.apply_all(only=[NAME])[NAME].status if patched else None
state = load_file(f"{path}/model.safetensors")
deepspeed.init_distributed(dist_backend="gloo")
ds_config = HfDeepSpeedConfig({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}})
model = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(path)
params = dict(model.named_parameters())
with deepspeed.zero.GatheredParameters(list(params.values())):
    differ = sorted(n for n, p in params.items() if not torch.equal(p.data, state[n]))
print(json.dumps({"status": status, "zero3": transformers.integrations.is_deepspeed_zero3_enabled(),
                  "params": len(params), "differ": differ}))
