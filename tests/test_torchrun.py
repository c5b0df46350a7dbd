"""torchrun: every rank is patched, by ``import compat_patches.auto`` at the top of the script or by
the launcher (``compat-patches-run python -m torch.distributed.run ...``); every rank's report is
the same. Two CPU ranks, gloo, the installed torch's own ``torch.distributed.run``.

Ranks use the fake records of tests/process_fakes.py (installed by the user's sitecustomize), so
"applied" is observable: the fake target returns the patched value in each rank.
"""

import json
import sys

import pytest

from .process_fakes import PATCHED, UNPATCHED, clean_env, launcher_command, run, write_fake_site

TRAIN = '''
import json
import os
import sys

if os.environ.get("USE_AUTO") == "1":
    import compat_patches.auto                  # the one line a training script adds

import torch
import torch.distributed as dist

import probe


def all_gather_json(obj, size=4096):
    """all_gather of a JSON-able object over gloo, as padded byte tensors (no numpy needed)."""
    data = json.dumps(obj, sort_keys=True).encode()
    mine = torch.zeros(size, dtype=torch.uint8)
    mine[: len(data)] = torch.tensor(list(data), dtype=torch.uint8)
    gathered = [torch.zeros(size, dtype=torch.uint8) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    return [json.loads(bytes(t.tolist()).rstrip(b"\\0").decode()) for t in gathered]

dist.init_process_group("gloo")
state = probe.state()
mine = {key: state[key] for key in ("statuses", "result", "via", "auto")}
everyone = all_gather_json(mine)                # what every rank saw, gathered over gloo
with open(os.path.join(sys.argv[1], f"rank{dist.get_rank()}.json"), "w") as f:
    json.dump({"state": state, "everyone": everyone}, f)
dist.barrier()
dist.destroy_process_group()
'''

pytestmark = pytest.mark.requires(torch=">=2.1")


def _torchrun(tmp_path, prefix=(), **env):
    site = write_fake_site(tmp_path / "site", extra={"train.py": TRAIN})
    out = tmp_path / "out"
    out.mkdir()
    command = list(prefix) + [sys.executable, "-m", "torch.distributed.run", "--standalone",
                              "--nproc-per-node", "2", str(site / "train.py"), str(out)]
    result = run(command, clean_env(PYTHONPATH=site, **env), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert ranks[0]["everyone"] == ranks[1]["everyone"]
    assert ranks[0]["everyone"][0] == ranks[0]["everyone"][1], "every rank's report is identical"
    return [rank["state"] for rank in ranks]


def _assert_patched(states):
    assert len({state["pid"] for state in states}) == 2
    for state in states:
        assert state["result"] == PATCHED
        assert state["statuses"] == {"fake-fix": "applied", "fake-drifted": "drifted",
                                     "fake-not-needed": "not-needed"}
        assert state["heavy"] == []


def test_import_auto_patches_every_rank(tmp_path):
    states = _torchrun(tmp_path, USE_AUTO="1")
    _assert_patched(states)
    assert all(state["auto"] and state["via"] == "auto" for state in states)


def test_launcher_patches_every_rank(tmp_path):
    states = _torchrun(tmp_path, prefix=launcher_command())
    _assert_patched(states)
    assert all(state["via"] == "sitecustomize" and not state["auto"] for state in states)


def test_without_either_no_rank_is_patched(tmp_path):
    """The control: the same run with neither the import nor the launcher."""
    for state in _torchrun(tmp_path):
        assert state["result"] == UNPATCHED and state["statuses"]["fake-fix"] == "pending"
