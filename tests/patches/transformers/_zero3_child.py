"""A real DeepSpeed ZeRO-3 from_pretrained (world size 1, CPU, gloo) of a tiny checkpoint; prints
which parameters differ from the normal load of the same files. argv: DIR CLASS [patched]."""
import json
import os
import sys

os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", DS_ACCELERATOR="cpu")

import deepspeed  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.integrations import HfDeepSpeedConfig  # noqa: E402

import compat_patches  # noqa: E402

NAME = "transformers-zero3-dropped-keys"
path, cls, patched = sys.argv[1], getattr(transformers, sys.argv[2]), sys.argv[3:] == ["patched"]
expected = cls.from_pretrained(path).state_dict()  # the normal load (before ZeRO-3 is configured)
status = compat_patches.apply_all(only=[NAME])[NAME].status if patched else None
deepspeed.init_distributed(dist_backend="gloo")
ds_config = HfDeepSpeedConfig({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}})
try:
    model = cls.from_pretrained(path)
except Exception as exc:  # the release may raise instead of dropping
    print(json.dumps({"status": status, "raised": f"{type(exc).__name__}: {exc}"[:300]}))
    sys.exit(0)
params = dict(model.named_parameters())
with deepspeed.zero.GatheredParameters(list(params.values())):
    differ = sorted(n for n, p in params.items() if not torch.equal(p.data, expected[n]))
print(json.dumps({"status": status, "zero3": transformers.integrations.is_deepspeed_zero3_enabled(),
                  "params": len(params), "differ": differ}))
