"""`python -m compat_patches scan PATH`: hand patches found by reading a tree with ast only.

Fixture trees are written into tmp_path for the purpose; each detection form has its own case. A
small record set (`_records()`) isolates the forms from the real data; the real records and the
not-needed list are exercised on snippets shaped like the hand patches in verl and ms-swift.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from compat_patches import scan
from compat_patches.core.record import Copy, NotNeeded, Patch, Replaces, Target
from compat_patches.not_needed import NOT_NEEDED
from compat_patches.patches import ALL_PATCHES

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = ROOT / "docs" / "patches"


def _wrapper(wrapped, instance, args, kwargs):
    return wrapped(*args, **kwargs)


def _records():
    return (
        Patch("lib-forward", "s", "", {"lib": ">=1.0,<2.0"},
              (Target("lib.models.gdn.modeling_gdn:GatedNet.forward", _wrapper),),
              fixed_in="lib 2.0",
              replaces=Replaces(
                  symbols=("lib.models.gdn.modeling_gdn:GatedNet.forward",
                           "lib.models.gdn.modeling_gdn:GatedLayer.forward",
                           "lib.mapping:MAPPING['fused_moe']",
                           "lib.mapping:register_mapping('fused_moe')",
                           "lib.integrations.speed:_apply_conversions"),
                  copies=(Copy("someone/project", "project/fixes.py", "patch_gated_net", inventory=7),))),
        Patch("lib-flag", "s", "", {"lib": ">=1.0"},
              (Target("lib.models.vl.modeling_vl:VLModel.forward", _wrapper),),
              replaces=Replaces(symbols=("lib.models.vl.modeling_vl:VLModel.accepts_loss_kwargs",))),
    )


def _not_needed():
    return (NotNeeded("lib-old-fix", "an old fix", symbols=("lib.cache:OldCache.update",),
                      needed_in={"lib": "<1.5"}, fixed_in="lib 1.5", evidence="read"),)


def _tree(tmp_path, files):
    for name, source in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    return tmp_path


def _scan(tmp_path, files, versions=None, **kwargs):
    root = _tree(tmp_path, files)
    kwargs.setdefault("records", _records())
    kwargs.setdefault("not_needed", _not_needed())
    return scan.scan(str(root), versions=versions or {"lib": "1.2"}, **kwargs)


def _sites(result, key="replaced"):
    return sorted((item["file"], item["line"], item.get("record") or item.get("entry"))
                  for item in result[key])


# ---- detection forms ----------------------------------------------------------------------------

def test_attribute_assignment_through_from_import(tmp_path):
    result = _scan(tmp_path, {"app.py": """
        from lib.models.gdn.modeling_gdn import GatedNet

        def fixed(self, x):
            return x

        GatedNet.forward = fixed
    """})
    [item] = result["replaced"]
    assert (item["file"], item["line"], item["record"]) == ("app.py", 7, "lib-forward")
    assert item["symbol"] == "lib.models.gdn.modeling_gdn:GatedNet.forward"
    assert item["form"] == "assignment" and item["confidence"] == "exact"
    assert item["needed"] is True and item["use"] == 'compat_patches.apply_all(only=["lib-forward"])'


def test_attribute_assignment_through_module_alias_and_reexport(tmp_path):
    result = _scan(tmp_path, {"app.py": """
        import lib.models.gdn.modeling_gdn as gdn
        import lib

        gdn.GatedNet.forward = lambda self, x: x
        lib.GatedLayer.forward = None        # a re-export from the package
        lib.models.gdn.modeling_gdn.GatedNet.backward = None   # another attribute: not ours
    """})
    assert _sites(result) == [("app.py", 5, "lib-forward"), ("app.py", 6, "lib-forward")]
    assert [i["confidence"] for i in result["replaced"]] == ["exact", "import"]


def test_setattr_with_literal_and_looped_names(tmp_path):
    result = _scan(tmp_path, {"app.py": """
        import lib.models.gdn.modeling_gdn as m

        setattr(m.GatedNet, "forward", None)
        for name in ("GatedNet", "GatedLayer"):
            setattr(getattr(m, name), "forward", None)
        for owner in (m.GatedNet,):
            setattr(owner, "unrelated", None)
    """})
    assert _sites(result) == [("app.py", 4, "lib-forward"), ("app.py", 6, "lib-forward")]
    assert {i["form"] for i in result["replaced"]} == {"setattr"}


def test_wrapt_helpers(tmp_path):
    result = _scan(tmp_path, {"app.py": """
        import wrapt
        from wrapt import wrap_function_wrapper
        import lib.models.gdn.modeling_gdn as gdn

        def w(wrapped, instance, args, kwargs):
            return wrapped(*args, **kwargs)

        wrap_function_wrapper("lib.models.gdn.modeling_gdn", "GatedNet.forward", w)
        wrapt.wrap_function_wrapper(gdn, "GatedLayer.forward", w)
        wrapt.wrap_object(gdn, "GatedNet.forward", wrapt.FunctionWrapper, (w,))

        @wrapt.patch_function_wrapper("lib.models.gdn.modeling_gdn", "GatedLayer.forward")
        def decorated(wrapped, instance, args, kwargs):
            return wrapped(*args, **kwargs)
    """, "other.py": """
        import wrapt
        from lib.models.gdn.modeling_gdn import GatedNet

        GatedNet.forward = wrapt.FunctionWrapper(GatedNet.forward, lambda *a: None)
    """})
    assert _sites(result) == [("app.py", 9, "lib-forward"), ("app.py", 10, "lib-forward"),
                              ("app.py", 11, "lib-forward"), ("app.py", 13, "lib-forward"),
                              ("other.py", 5, "lib-forward")]
    assert {i["form"] for i in result["replaced"] if i["file"] == "app.py"} == {"wrapt"}


def test_functools_wraps_replacement_assigned_back(tmp_path):
    result = _scan(tmp_path, {"app.py": """
        import functools
        from lib.models.gdn.modeling_gdn import GatedNet

        original = GatedNet.forward

        @functools.wraps(original)
        def forward(self, *args, **kwargs):
            return original(self, *args, **kwargs)

        setattr(GatedNet, "forward", forward)
    """, "returned.py": """
        from functools import wraps
        from lib.models.gdn import modeling_gdn

        def make():
            @wraps(modeling_gdn.GatedLayer.forward)
            def forward(self):
                pass
            return forward
    """})
    # the assignment stands for the wraps() of the same symbol in app.py; a wraps() alone is a site
    assert _sites(result) == [("app.py", 11, "lib-forward"), ("returned.py", 6, "lib-forward")]
    assert [i["form"] for i in result["replaced"]] == ["setattr", "functools.wraps"]


def test_registry_overwrites(tmp_path):
    result = _scan(tmp_path, {"app.py": """
        from lib import mapping
        from lib.mapping import MAPPING, register_mapping

        MAPPING["fused_moe"] = []
        mapping.MAPPING.update({"fused_moe": [], "other": []})
        MAPPING["dense"] = []                 # another entry: not ours
        register_mapping("fused_moe", [], overwrite=True)
        register_mapping("dense", [], overwrite=True)
        mapping.register_mapping(key, [])     # key unknown here: a possible match
    """})
    found = [(i["line"], i["form"], i["confidence"]) for i in result["replaced"]]
    assert found == [(5, "assignment", "exact"), (6, "registry", "exact"), (8, "call", "exact"),
                     (10, "call", "possible")]


def test_string_path_patchers_outside_tests_only(tmp_path):
    files = {"app.py": """
        from unittest import mock
        import lib.models.gdn.modeling_gdn as gdn

        mock.patch("lib.models.gdn.modeling_gdn.GatedNet.forward", new=None).start()
        mock.patch.object(gdn.GatedLayer, "forward", None).start()
        mock.patch.dict("lib.mapping.MAPPING", {"fused_moe": []}).start()
    """, "tests/test_app.py": """
        from unittest import mock

        def test_x(monkeypatch):
            monkeypatch.setattr("lib.models.gdn.modeling_gdn.GatedNet.forward", None)
            with mock.patch("lib.models.gdn.modeling_gdn.GatedNet.forward"):
                pass
    """}
    result = _scan(tmp_path, files)
    assert _sites(result) == [("app.py", 5, "lib-forward"), ("app.py", 6, "lib-forward"),
                              ("app.py", 7, "lib-forward")]
    assert {i["form"] for i in result["replaced"]} == {"mock.patch"}
    with_tests = scan.scan(str(tmp_path), versions={"lib": "1.2"}, records=_records(),
                           not_needed=_not_needed(), include_tests=True)
    assert ("tests/test_app.py", 5, "lib-forward") in _sites(with_tests)
    assert ("tests/test_app.py", 6, "lib-forward") in _sites(with_tests)


def test_dynamic_imports_fstrings_and_loops(tmp_path):
    result = _scan(tmp_path, {"app.py": """
        import importlib
        import sys

        def apply(model_type, prefix):
            module = importlib.import_module(f"lib.models.{model_type}.modeling_{model_type}")
            getattr(module, f"{prefix}Layer").forward = None
            cls = getattr(module, f"{prefix}Net")
            cls.forward = None

        apply("gdn", "Gated")

        mod = sys.modules["lib.models.gdn.modeling_gdn"]
        for klass in [mod.GatedNet, mod.GatedLayer]:
            klass.forward = None
        specs = []
        specs.append((mod.GatedNet, 1))
        for target, _ in specs:
            target.forward = None
        for name, value in {"accepts_loss_kwargs": True}.items():
            setattr(importlib.import_module("lib.models.vl.modeling_vl").VLModel, name, value)

        def never_called(kind):
            getattr(importlib.import_module(f"lib.models.{kind}.modeling_{kind}"), f"{kind}Layer").forward = 1
    """})
    found = {(i["line"], i["record"]) for i in result["replaced"]}
    assert found == {(7, "lib-forward"), (9, "lib-forward"), (15, "lib-forward"),
                     (19, "lib-forward"), (21, "lib-flag"), (24, "lib-forward")}
    confidence = {i["line"]: i["confidence"] for i in result["replaced"]}
    assert confidence[7] == confidence[9] == "exact"  # the call apply("gdn", "Gated") fills the f-strings
    assert confidence[24] == "pattern"


def test_arguments_passed_to_the_files_own_function(tmp_path):
    result = _scan(tmp_path, {"app.py": """
        from lib.models.gdn.modeling_gdn import GatedNet

        def _wrap_forward(cls, new):
            cls.forward = new

        def install():
            _wrap_forward(GatedNet, lambda self: None)
    """})
    assert _sites(result) == [("app.py", 5, "lib-forward")]


def test_unknown_owner_matches_by_class_name(tmp_path):
    result = _scan(tmp_path, {"app.py": """
        def patch(module):
            module.GatedNet.forward = None     # `module` comes from elsewhere
            module.forward = None              # a bare name: too common to match
            helper.Unrelated.forward = None
    """})
    [item] = result["replaced"]
    assert (item["line"], item["confidence"]) == (3, "name")


def test_own_package_and_local_classes_are_not_hand_patches(tmp_path):
    result = _scan(tmp_path, {"lib/__init__.py": "", "lib/models/gdn/modeling_gdn.py": """
        class GatedNet:
            def forward(self):
                pass

        GatedNet.forward = GatedNet.forward
    """, "app.py": """
        class GatedNet:
            pass

        GatedNet.forward = None
        self_like = object()

        class Mine:
            def __init__(self):
                self.forward = None
    """})
    assert result["replaced"] == []


def test_module_level_symbol_needs_its_module(tmp_path):
    result = _scan(tmp_path, {"app.py": """
        import lib.integrations.speed as speed
        import lib.masks as masks
        import lib

        speed._apply_conversions = None
        lib._apply_conversions = None         # a re-export from the package above: ours
        masks._apply_conversions = None       # the same name in another module: not ours
    """})
    assert [i["line"] for i in result["replaced"]] == [6, 7]


def test_known_copy_definition_is_found_without_an_assignment(tmp_path):
    result = _scan(tmp_path, {"project/fixes.py": """
        def patch_gated_net():
            pass
    """})
    [item] = result["replaced"]
    assert item["form"] == "known copy" and item["copy"]["inventory"] == 7


def test_assignment_inside_a_known_copy_names_it(tmp_path):
    result = _scan(tmp_path, {"project/fixes.py": """
        from lib.models.gdn.modeling_gdn import GatedNet

        def patch_gated_net():
            GatedNet.forward = None
    """})
    [item] = result["replaced"]
    assert item["form"] == "assignment" and item["copy"]["function"] == "patch_gated_net"


def test_context_manager_hand_patch_suggests_patched(tmp_path):
    result = _scan(tmp_path, {"app.py": """
        from contextlib import contextmanager
        from lib.models.gdn.modeling_gdn import GatedNet

        @contextmanager
        def fixed():
            original = GatedNet.forward
            GatedNet.forward = None
            try:
                yield
            finally:
                GatedNet.forward = original
    """})
    assert [i["line"] for i in result["replaced"]] == [8, 12]
    assert result["replaced"][0]["use"] == 'with compat_patches.patched("lib-forward"):'


def test_not_needed_entries_and_their_status(tmp_path):
    files = {"app.py": """
        from lib.cache import OldCache
        OldCache.update = None
    """}
    result = _scan(tmp_path, files, versions={"lib": "1.7"})
    [item] = result["not_needed"]
    assert item["entry"] == "lib-old-fix" and item["deletable"] is True and "lib 1.5" in item["status"]
    again = scan.scan(str(tmp_path), versions={"lib": "1.2"}, records=_records(),
                      not_needed=_not_needed())
    assert again["not_needed"][0]["deletable"] is False


def test_record_status_follows_the_versions(tmp_path):
    files = {"app.py": "from lib.models.gdn.modeling_gdn import GatedNet\nGatedNet.forward = None\n"}
    assert _scan(tmp_path, files, versions={"lib": "1.5rc1"})["replaced"][0]["needed"] is True
    fixed = scan.scan(str(tmp_path), versions={"lib": "2.0"}, records=_records(), not_needed=())
    assert fixed["replaced"][0]["needed"] is False
    assert "fixed in lib 2.0" in fixed["replaced"][0]["status"]


def test_unparsable_file_is_reported_not_fatal(tmp_path):
    result = _scan(tmp_path, {"bad.py": "def (:\n", "app.py": "x = 1\n"})
    assert [s["file"] for s in result["skipped"]] == ["bad.py"]
    assert result["files"] == 2


def test_the_tree_is_never_imported_or_executed(tmp_path):
    marker = tmp_path / "executed"
    result = _scan(tmp_path, {"evil.py": f"""
        open({str(marker)!r}, "w").write("ran")
        raise SystemExit("imported")
        from lib.models.gdn.modeling_gdn import GatedNet
        GatedNet.forward = None
    """})
    assert not marker.exists()
    assert _sites(result) == [("evil.py", 5, "lib-forward")]
    assert "evil" not in sys.modules


# ---- the real data, on snippets shaped like verl's and ms-swift's hand patches --------------------

def test_real_records_on_verl_and_ms_swift_shaped_snippets(tmp_path):
    root = _tree(tmp_path, {
        "verl/models/transformers/monkey_patch.py": """
            def apply_monkey_patch(model):
                from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet
                from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5VisionModel
                from verl.models.transformers.qwen3_5 import fast_pos_embed_interpolate, gdn_forward
                Qwen3_5GatedDeltaNet.forward = gdn_forward
                Qwen3_5VisionModel.fast_pos_embed_interpolate = fast_pos_embed_interpolate
        """,
        "swift/infer_engine/vllm_engine.py": """
            from contextlib import contextmanager

            @contextmanager
            def _patch_rope_validation_ignore_keys():
                from transformers import PretrainedConfig
                origin = getattr(PretrainedConfig, 'convert_rope_params_to_dict', None)
                PretrainedConfig.convert_rope_params_to_dict = lambda self, **kw: origin(self, **kw)
                try:
                    yield
                finally:
                    PretrainedConfig.convert_rope_params_to_dict = origin
        """,
        "verl/utils/fsdp_utils.py": """
            import torch
            try:
                fully_shard_module = torch.distributed.fsdp._fully_shard._fully_shard
            except AttributeError:
                fully_shard_module = None

            def maybe_patch_fsdp_module(model):
                orig = fully_shard_module.FSDPModule
                fully_shard_module.FSDPModule = type("FSDPModuleABC", (orig,), {})
        """,
    })
    result = scan.scan(str(root), versions={"transformers": "5.25.0", "torch": "2.9.0"})
    replaced = {(i["file"], i["line"]): i for i in result["replaced"]}
    gdn = replaced["verl/models/transformers/monkey_patch.py", 6]
    assert gdn["record"] == "transformers-gdn-packed-samples" and gdn["needed"] is True
    rope = replaced["swift/infer_engine/vllm_engine.py", 8]
    assert rope["record"] == "transformers-rope-ignore-keys" and rope["copy"]["inventory"] == 10
    assert rope["needed"] is False  # 5.25.0 carries the fix
    assert rope["use"] == 'with compat_patches.patched("transformers-rope-ignore-keys"):'
    unnecessary = {(i["file"], i["line"]): i for i in result["not_needed"]}
    assert unnecessary["verl/models/transformers/monkey_patch.py", 7]["entry"] == \
        "verl-fast-pos-embed-device"
    assert unnecessary["verl/models/transformers/monkey_patch.py", 7]["deletable"] is True
    fsdp = unnecessary["verl/utils/fsdp_utils.py", 10]
    assert fsdp["entry"] == "fsdp-module-abc-swap" and fsdp["copy"]["inventory"] == 5
    older = scan.scan(str(root), versions={"transformers": "5.5.0", "torch": "2.9.0"})
    assert {i["record"]: i["needed"] for i in older["replaced"]}["transformers-rope-ignore-keys"]
    assert {i["entry"]: i["deletable"] for i in older["not_needed"]}["verl-fast-pos-embed-device"] \
        is False


def test_every_declared_symbol_and_copy_is_well_formed():
    entries = scan.load_entries()
    assert len({e.name for e in entries}) == len(entries)
    for entry in entries:
        for symbol in entry.symbols:
            assert symbol.root and all(symbol.qual), symbol.text
            assert symbol.root in {"transformers", "peft", "vllm", "vllm_ascend", "verl", "trl",
                                   "torch", "accelerate"}, symbol.text
        for copy in entry.copies:
            last = copy.function.split(".")[-1]
            assert not last or last not in {"forward", "__init__", "__call__", "update", "patch"}, (
                f"{entry.name}: copy function {copy.function!r} is too common to match by name")
    for item in NOT_NEEDED:
        for dist, specs in item.needed_in.items():
            for spec in specs:
                from compat_patches.core.versions import parse_specifier

                parse_specifier(spec, owner=item.key)


def test_record_fields():
    record = _records()[1]
    assert record.replaces.symbols == ("lib.models.vl.modeling_vl:VLModel.accepts_loss_kwargs",)
    plain = Patch("lib-x", "s", "", {"lib": ">=1"}, (Target("lib.m:C.f", _wrapper),))
    assert not plain.replaces and plain.replaces.symbols == () and plain.replaces.copies == ()
    with pytest.raises(TypeError):
        Patch("lib-x", "s", "", {"lib": ">=1"}, (), replaces=("lib.m:C.f",))
    with pytest.raises(ValueError):
        Replaces(symbols=("lib.m.C.f",))
    with pytest.raises(TypeError):
        Replaces(copies=("project/file.py",))
    with pytest.raises(ValueError):
        NotNeeded("x", "s", verified="guessed")


def test_import_compat_patches_does_not_import_the_scanner():
    code = ("import sys, compat_patches; compat_patches.report(); "
            "print('compat_patches.scan' in sys.modules, 'ast' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout.split()
    assert out[0] == "False"


# ---- the command ---------------------------------------------------------------------------------

def test_command_text_json_and_exit_status(tmp_path):
    _tree(tmp_path, {"app.py": """
        from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as m
        m.Qwen3_5MoeGatedDeltaNet.forward = None
    """})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = [sys.executable, "-m", "compat_patches", "scan", str(tmp_path)]  # the documented command
    text = subprocess.run(run + ["--for", "transformers==5.5.0,torch==2.9.0"], capture_output=True,
                          text=True, env=env)
    assert text.returncode == 0, text.stderr
    assert "app.py" in text.stdout and "transformers-gdn-packed-samples: needed" in text.stdout
    assert 'compat_patches.apply_all(only=["transformers-gdn-packed-samples"])' in text.stdout
    data = json.loads(subprocess.run(run + ["--json", "--for", "transformers==5.5.0"],
                                     capture_output=True, text=True, env=env).stdout)
    assert data["replaced"][0]["line"] == 3 and data["given"]["transformers"] == "5.5.0"
    failing = subprocess.run(run + ["--fail-on-found"], capture_output=True, text=True, env=env)
    assert failing.returncode == 1
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "x.py").write_text("x = 1\n")
    ok = subprocess.run([sys.executable, "-m", "compat_patches.scan", str(clean), "--fail-on-found"],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0
    bad = subprocess.run(run + ["--for", "transformers>=5"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "DIST==VERSION" in bad.stderr


def test_main_accepts_argv_and_lists_other_library_patches(tmp_path, capsys):
    _tree(tmp_path, {"app.py": "import accelerate\naccelerate.Accelerator.clip_grad_norm_ = None\n"})
    assert scan.main([str(tmp_path), "--all"]) == 0
    out = capsys.readouterr().out
    assert "accelerate.Accelerator.clip_grad_norm_ (assignment)" in out


# ---- the docs pages' "Replaces" sections ---------------------------------------------------------

@pytest.mark.parametrize("record", [r for r in ALL_PATCHES if r.replaces], ids=lambda r: r.name)
def test_replaces_section_is_generated_from_the_record(record):
    text = (PAGES / f"{record.name}.md").read_text(encoding="utf-8")
    block = scan.extract_block(text)
    assert block is not None, (f"docs/patches/{record.name}.md has no generated 'Replaces' block; "
                               f"run: {scan.REGENERATE}")
    assert block == scan.replaces_markdown(record), (
        f"docs/patches/{record.name}.md: the 'Replaces' section is out of date; run: {scan.REGENERATE}")
    section = text.split("\n## Replaces\n", 1)[1]
    assert section.lstrip("\n").startswith(scan.START)


def test_update_page_replaces_only_the_section(tmp_path):
    record = _records()[0]
    page = "# lib-forward\n\nintro\n\n## Replaces\n\nold prose\n\n## After\n\nkept\n"
    new = scan.update_page(page, record)
    assert new.startswith("# lib-forward\n\nintro\n\n## Replaces\n\n" + scan.START)
    assert new.endswith(scan.END + "\n\n## After\n\nkept\n") and "old prose" not in new
    assert scan.update_page(new, record) == new
