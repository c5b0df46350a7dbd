"""tools/audit.py: each detection form on small source trees written here, the reviewed list, the exit
status, the registry-target check in a subprocess, and one run on the installed transformers (>=5.25)."""

import importlib.util
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("compat_patches_audit", ROOT / "tools" / "audit.py")
audit = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = audit
_spec.loader.exec_module(audit)

GDN, MAMBA2, RAGGED = audit.GDN, audit.MAMBA2, audit.RAGGED


def tree(tmp_path, files, version="5.25.0"):
    """A transformers package under tmp_path with `files` ({relative path: source})."""
    base = tmp_path / "transformers"
    files = {"__init__.py": f'__version__ = "{version}"\n',
             "modeling_utils.py": "class PreTrainedModel:\n    pass\n", **files}
    for path, text in files.items():
        target = base / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
    return audit.SourceTree(base)


def by_key(findings):
    return {f.key: f for f in findings}


def module(folder, kind="modeling"):
    return f"transformers.models.{folder}.{kind}_{folder}"


# ----- (a) stale accepts_loss_kwargs --------------------------------------------------------------

STALE = """
from ...modeling_utils import PreTrainedModel


class FooPreTrainedModel(PreTrainedModel):
    pass


class FooForConditionalGeneration(FooPreTrainedModel):
    accepts_loss_kwargs = False

    def forward(self, input_ids, labels=None, **kwargs):
        return self.loss_function(logits=input_ids, labels=labels, vocab_size=3, **kwargs)


class FooRightForConditionalGeneration(FooPreTrainedModel):
    accepts_loss_kwargs = False  # right: the loss never gets the count

    def forward(self, input_ids, labels=None, **kwargs):
        return self.loss_function(logits=input_ids, labels=labels, vocab_size=3)


class FooFixedForConditionalGeneration(FooForConditionalGeneration):
    accepts_loss_kwargs = True


class FooInheritsForConditionalGeneration(FooForConditionalGeneration):
    pass
"""

# the flag and the forward both from a class of another model, through the package's imports
STALE_ELSEWHERE = """
from ..foo.modeling_foo import FooForConditionalGeneration


class BarForConditionalGeneration(FooForConditionalGeneration):
    def forward(self, input_ids, labels=None, **loss_kwargs):
        return self.loss_function(input_ids, labels, 3, **loss_kwargs)
"""


def test_stale_loss_flag_own_body_base_and_imported_base(tmp_path):
    source = tree(tmp_path, {"models/foo/modeling_foo.py": STALE, "models/bar/modeling_bar.py": STALE_ELSEWHERE})
    findings = by_key(audit.scan_stale_loss(audit.Index(source), audit.Coverage(), "5.25.0"))
    foo = f"{module('foo')}:FooForConditionalGeneration"
    assert set(findings) == {foo, f"{module('foo')}:FooInheritsForConditionalGeneration",
                             f"{module('bar')}:BarForConditionalGeneration"}
    assert all(f.status == audit.UNCOVERED for f in findings.values())
    assert "own body" in findings[foo].message and "not in transformers-stale-loss-kwargs CLASSES" in \
        findings[foo].message
    bar = findings[f"{module('bar')}:BarForConditionalGeneration"].message
    assert f"from {module('foo')}:FooForConditionalGeneration" in bar and "**loss_kwargs" in bar


def test_stale_loss_flag_covered_from_its_first_release_only(tmp_path):
    source = tree(tmp_path, {"models/foo/modeling_foo.py": STALE, "models/bar/modeling_bar.py": STALE_ELSEWHERE})
    coverage = audit.Coverage({(module("foo"), "FooForConditionalGeneration"): "5.25.0"})
    findings = audit.scan_stale_loss(audit.Index(source), coverage, "5.25.0")
    # the runtime check reads the class that sets the flag: subclasses are covered with it
    assert {f.status for f in findings} == {audit.COVERED}
    older = audit.scan_stale_loss(audit.Index(source), coverage, "5.24.0")
    assert {f.status for f in older} == {audit.UNCOVERED}
    assert "lists FooForConditionalGeneration from 5.25.0 only" in older[0].message


# ----- (b) GatedDeltaNet / Mamba2 mixers ---------------------------------------------------------

GDN_BY_BODY = """
from torch import nn
from ...modeling_layers import GradientCheckpointingLayer


def chunk_gated_delta_rule(q, k, v, **kwargs):
    return q


class WidgetLinearMixer(nn.Module):  # no telling name: found by its body
    def __init__(self, config):
        super().__init__()
        self.rule = chunk_gated_delta_rule

    def forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
        return chunk_gated_delta_rule(hidden_states, hidden_states, hidden_states, **kwargs)


class WidgetAttention(nn.Module):
    def forward(self, hidden_states):
        return hidden_states


class WidgetDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config, layer_type):
        super().__init__()
        if layer_type == "linear":
            self.linear_attn = WidgetLinearMixer(config)
        else:
            self.self_attn = WidgetAttention()

    def forward(self, hidden_states, attention_mask=None, position_ids=None, cache=None, **kwargs):
        return self.linear_attn(hidden_states=hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)


class WidgetModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList([WidgetDecoderLayer(config, t) for t in config.layer_types])

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        hidden_states = input_ids
        for decoder_layer in self.layers:
            hidden_states = decoder_layer(hidden_states, attention_mask=attention_mask,
                                          position_ids=position_ids, **kwargs)
        return hidden_states
"""

GDN_BY_NAME = """
from torch import nn


class GizmoGatedDeltaNet(nn.Module):  # the name says it (its kernel is elsewhere)
    def forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
        return self.kernel(hidden_states)
"""

MAMBA2_VARIANTS = """
from torch import nn


def segment_sum(x):
    return x


class SproutMixer(nn.Module):  # through a dispatch table, as NemotronH builds its mixer
    def forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
        return mamba_chunk_scan_combined(hidden_states, **kwargs)


class SproutOldMixer(nn.Module):  # releases <= 5.14: cuda_kernels_forward / torch_forward
    def torch_forward(self, hidden_states, cache_params=None):
        ssm_state = cache_params.ssm_states[0]
        return segment_sum(hidden_states) + ssm_state

    def forward(self, hidden_states, cache_params=None):
        return self.torch_forward(hidden_states, cache_params)


MIXER_TYPES = {"mamba": SproutMixer, "old": SproutOldMixer}


class SproutBlock(nn.Module):
    def __init__(self, config, kind):
        super().__init__()
        self.mixer = MIXER_TYPES[kind](config)

    def forward(self, hidden_states, cache=None, attention_mask=None, position_ids=None, **kwargs):
        return self.mixer(hidden_states, cache=cache, attention_mask=attention_mask)
"""

# a mixer of another model subclassed under a new name: found through its base (the text names it)
MAMBA2_SUBCLASS = """
from ..sprout.modeling_sprout import SproutMixer


class LeafMambaLayer(SproutMixer):
    pass
"""


def test_gdn_found_by_body_and_by_name_with_their_layer_and_model(tmp_path):
    source = tree(tmp_path, {"models/widget/modeling_widget.py": GDN_BY_BODY,
                             "models/gizmo/modeling_gizmo.py": GDN_BY_NAME,
                             "modeling_layers.py": "class GradientCheckpointingLayer:\n    pass\n"})
    index = audit.Index(source)
    findings = by_key(audit.scan_mixers(index, audit.Coverage(), "5.25.0"))
    widget, gizmo = f"{module('widget')}:WidgetLinearMixer", f"{module('gizmo')}:GizmoGatedDeltaNet"
    assert set(findings) == {widget, gizmo}
    assert findings[widget].kind == "gdn-layer" and "body: chunk_gated_delta_rule" in findings[widget].message
    assert "decoder layer WidgetDecoderLayer" in findings[widget].message
    assert "class name" in findings[gizmo].message and "no decoder layer found" in findings[gizmo].message

    found = {node.name: (m, node) for kind, why, m, node in audit.find_mixers(index)}
    info = audit.describe_mixer(index, *found["WidgetLinearMixer"])
    assert info["forward"] == ("self", "hidden_states", "cache", "attention_mask", "kwargs")
    (layer,) = info["layers"]
    assert layer["class"] == "WidgetDecoderLayer" and layer["attribute"] == "linear_attn"
    assert layer["forward"] == ("self", "hidden_states", "attention_mask", "position_ids", "cache", "kwargs")
    assert layer["mixer_call_shapes"] == [(["hidden_states", "cache", "attention_mask"], True, 0)]
    (model,) = layer["models"]
    assert model["class"] == "WidgetModel"
    assert model["layer_call_shapes"] == [(["attention_mask", "position_ids"], True, 1)]


def test_gdn_covered_only_with_mixer_and_layer_targeted_on_this_release(tmp_path):
    source = tree(tmp_path, {"models/widget/modeling_widget.py": GDN_BY_BODY,
                             "modeling_layers.py": "class GradientCheckpointingLayer:\n    pass\n"})
    path = f"{module('widget')}:Widget"
    both = audit.Coverage(records={GDN: (">=5.0", [(path + "LinearMixer.forward", ">=5.24"),
                                                  (path + "DecoderLayer.forward", None)])})
    (finding,) = audit.scan_mixers(audit.Index(source), both, "5.25.0")
    assert finding.status == audit.COVERED
    (older,) = audit.scan_mixers(audit.Index(source), both, "5.23.0")
    assert older.status == audit.UNCOVERED and "WidgetLinearMixer.forward" in older.message
    assert "targeted only on transformers>=5.0 for >=5.24" in older.message
    mixer_only = audit.Coverage(records={GDN: (">=5.0", [(path + "LinearMixer.forward", None)])})
    (finding,) = audit.scan_mixers(audit.Index(source), mixer_only, "5.25.0")
    assert finding.status == audit.UNCOVERED
    assert "does not target WidgetDecoderLayer.forward" in finding.message
    other_record = audit.Coverage(records={MAMBA2: (">=5.0", [(path + "LinearMixer.forward", None),
                                                              (path + "DecoderLayer.forward", None)])})
    (finding,) = audit.scan_mixers(audit.Index(source), other_record, "5.25.0")
    assert finding.status == audit.UNCOVERED  # only the packed-samples record of its kind covers it


def test_mamba2_found_by_scan_call_by_torch_forward_and_through_a_base(tmp_path):
    source = tree(tmp_path, {"models/sprout/modeling_sprout.py": MAMBA2_VARIANTS,
                             "models/leaf/modeling_leaf.py": MAMBA2_SUBCLASS})
    findings = by_key(audit.scan_mixers(audit.Index(source), audit.Coverage(), "5.25.0"))
    sprout, old, leaf = (f"{module('sprout')}:SproutMixer", f"{module('sprout')}:SproutOldMixer",
                         f"{module('leaf')}:LeafMambaLayer")
    assert set(findings) == {sprout, old, leaf}
    assert {f.kind for f in findings.values()} == {"mamba2-layer"}
    assert "mamba_chunk_scan_combined" in findings[sprout].message
    assert "torch_forward with ssm_state" in findings[old].message
    assert f"base {module('sprout')}:SproutMixer" in findings[leaf].message
    assert "decoder layer SproutBlock" in findings[sprout].message  # via MIXER_TYPES[kind](...)


# ----- (c) token type ids from a batch-level array ----------------------------------------------

PROCESSORS = """
import numpy as np


class RaggedKwargs:
    _defaults = {"text_kwargs": {"padding": False, "return_mm_token_type_ids": True}}


class RaggedProcessor:
    def __call__(self, images=None, text=None, **kwargs):
        text_inputs = self.tokenizer(text)
        array_ids = np.array(text_inputs["input_ids"])
        text_inputs["mm_token_type_ids"] = (array_ids == self.image_token_id).astype(int).tolist()
        return text_inputs


class HelperProcessor:
    def create_moe_mm_token_type_ids(self, input_ids):
        array_ids = np.array(input_ids)
        return (array_ids == self.image_token_id).tolist()


class RowByRowProcessor:
    def create_mm_token_type_ids(self, input_ids):
        out = []
        for row in input_ids:
            ids = np.array(row)
            out.append((ids == self.image_token_id).tolist())
        return out

    def labels(self, result):
        return [np.where(np.asarray(token_type_ids) == 0, -100, ids)
                for ids, token_type_ids in zip(result["input_ids"], result["token_type_ids"])]


class NoTypesProcessor:
    def __call__(self, text=None):
        return np.array(self.tokenizer(text)["input_ids"])  # no token type ids here
"""


def test_ragged_token_type_ids_batch_arrays_only(tmp_path):
    source = tree(tmp_path, {"models/vl/processing_vl.py": PROCESSORS})
    findings = by_key(audit.scan_processors(audit.Index(source), audit.Coverage(), "5.25.0"))
    call, helper = (f"{module('vl', 'processing')}:RaggedProcessor.__call__",
                    f"{module('vl', 'processing')}:HelperProcessor.create_moe_mm_token_type_ids")
    assert set(findings) == {call, helper}
    assert 'np.array(text_inputs["input_ids"])' in findings[call].message
    assert "return_mm_token_type_ids defaults to True" in findings[call].message
    covered = audit.Coverage(records={RAGGED: (">=5.3.0.dev0,<=5.4.0.dev0", [
        (f"{module('vl', 'processing')}:RaggedProcessor.__call__", None)])})
    statuses = {f.key: f.status for f in audit.scan_processors(audit.Index(source), covered, "5.3.0")}
    assert statuses == {call: audit.COVERED, helper: audit.UNCOVERED}
    outside = {f.key: f.status for f in audit.scan_processors(audit.Index(source), covered, "5.25.0")}
    assert outside[call] == audit.UNCOVERED  # the record's range ends before this release


# ----- sources: a wheel reads as its directory does --------------------------------------------

def test_a_wheel_is_read_like_its_directory(tmp_path):
    import zipfile

    source = tree(tmp_path, {"models/gizmo/modeling_gizmo.py": GDN_BY_NAME}, version="5.26.0.dev0")
    wheel = tmp_path / "transformers-5.26.0.dev0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path in source.files():
            archive.writestr(f"transformers/{path}", source.read(path))
    from_wheel = audit.SourceTree(wheel)
    assert from_wheel.version == "5.26.0.dev0" and from_wheel.files() == source.files()
    keys = [f.key for f in audit.scan_mixers(audit.Index(from_wheel), audit.Coverage(), from_wheel.version)]
    assert keys == [f"{module('gizmo')}:GizmoGatedDeltaNet"]


# ----- the reviewed list and the command ---------------------------------------------------------

def _reviewed_file(tmp_path, entries):
    path = tmp_path / "reviewed.py"
    path.write_text(f"REVIEWED = {entries!r}\n")
    return str(path)


def test_main_exit_status_and_reviewed_list(tmp_path, capsys):
    source = tree(tmp_path, {"models/gizmo/modeling_gizmo.py": GDN_BY_NAME})
    key = f"gdn-layer:{module('gizmo')}:GizmoGatedDeltaNet"
    argv = ["--source", str(source.location)]
    assert audit.main(argv + ["--reviewed", _reviewed_file(tmp_path, {})]) == 1
    out = capsys.readouterr().out
    assert f"UNCOVERED gdn-layer {module('gizmo')}:GizmoGatedDeltaNet:" in out
    assert "1 uncovered" in out and "registry targets not checked" in out

    reviewed = _reviewed_file(tmp_path, {key: "a fixture", "gdn-layer:gone:Gone": "no longer there"})
    assert audit.main(argv + ["--reviewed", reviewed]) == 0
    out = capsys.readouterr().out
    assert "REVIEWED  gdn-layer" in out and "[reviewed: a fixture]" in out
    assert "STALE     reviewed entry matches nothing here: gdn-layer:gone:Gone" in out

    # a review limited to releases before this one no longer holds
    limited = _reviewed_file(tmp_path, {key: {"reason": "until 5.24", "versions": "<5.25"}})
    assert audit.main(argv + ["--reviewed", limited]) == 1
    capsys.readouterr()

    assert audit.main(["--source", str(tmp_path / "nowhere")]) == 2


def test_a_reviewed_entry_needs_a_reason(tmp_path):
    with pytest.raises(ValueError, match="has no reason"):
        audit.load_reviewed(_reviewed_file(tmp_path, {"gdn-layer:x:Y": ""}))


def test_the_shipped_reviewed_list_loads_with_reasons():
    reviewed = audit.load_reviewed(audit.DEFAULT_REVIEWED)
    assert reviewed and all(reason for reason, _ in reviewed.values())
    assert all(key.split(":", 1)[0] in audit.RECORD_OF_KIND or key.startswith("target:") for key in reviewed)


def test_coverage_from_the_registry_reads_the_records():
    coverage = audit.Coverage.from_registry()
    from compat_patches.patches.transformers import stale_loss_kwargs

    assert coverage.loss_classes == stale_loss_kwargs.CLASSES
    assert {GDN, MAMBA2, RAGGED} <= set(coverage.records)
    assert any(path.endswith(":Qwen3NextGatedDeltaNet.forward") for path, _ in coverage.records[GDN][1])


# ----- (d) the registry's targets, in a subprocess -----------------------------------------------

FIXTURE_LIB = '''
class Thing:
    def method(self, x):
        return x

    def other(self, x, y):
        return x


def function(a):
    return a
'''

FIXTURE_RECORDS = '''
from compat_patches.core import Patch, Target


def _wrapper(wrapped, instance, args, kwargs):
    return wrapped(*args, **kwargs)


def _drifted(original):
    return "the fingerprint changed"


def _fixed(original):
    return "upstream fixed it"


ALL_PATCHES = (
    Patch(name="fixture-record", summary="s", upstream="u", affected={"auditfixture": ">=1.0"}, targets=(
        Target("auditfixture_lib:Thing.method", _wrapper, params=("self", "x")),
        Target("auditfixture_lib:Thing.other", _wrapper, params=("self", "x")),
        Target("auditfixture_lib:Thing.gone", _wrapper),
        Target("auditfixture_lib:function", _wrapper, check=_drifted),
        Target("auditfixture_lib:Thing.method", _wrapper, fixed=_fixed, versions="<1.0"),
    )),
    Patch(name="fixture-fixed-record", summary="s", upstream="u", affected={"auditfixture": ">=1.0"},
          targets=(Target("auditfixture_lib:function", _wrapper, fixed=_fixed),)),
    Patch(name="fixture-no-target", summary="s", upstream="u", affected={"auditfixture": ">=1.0"},
          targets=(Target("auditfixture_lib:function", _wrapper, versions="<1.0"),)),
    Patch(name="fixture-old-record", summary="s", upstream="u", affected={"auditfixture": "<1.0"},
          targets=(Target("auditfixture_lib:function", _wrapper),)),
)
'''


@pytest.mark.requires(wrapt=">=2.4")  # what compat_patches needs (the child runs its drift check)
def test_registry_targets_checked_in_a_subprocess(tmp_path, monkeypatch):
    registry = tmp_path / "registry"
    shutil.copytree(ROOT / "compat_patches", registry / "compat_patches",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(registry / "compat_patches" / "patches")
    (registry / "compat_patches" / "patches").mkdir()
    (registry / "compat_patches" / "patches" / "__init__.py").write_text(FIXTURE_RECORDS)
    lib = tmp_path / "lib"
    (lib / "auditfixture-1.2.dist-info").mkdir(parents=True)
    (lib / "auditfixture-1.2.dist-info" / "METADATA").write_text("Name: auditfixture\nVersion: 1.2\n")
    (lib / "auditfixture_lib.py").write_text(FIXTURE_LIB)
    monkeypatch.setenv("PYTHONPATH", str(lib))

    findings = by_key(audit.scan_targets(sys.executable, str(registry)))
    statuses = {key: f.status for key, f in findings.items()}
    assert statuses == {
        "fixture-record:auditfixture_lib:Thing.method": audit.COVERED,
        "fixture-record:auditfixture_lib:Thing.other": audit.UNCOVERED,
        "fixture-record:auditfixture_lib:Thing.gone": audit.UNCOVERED,
        "fixture-record:auditfixture_lib:function": audit.UNCOVERED,
        "fixture-fixed-record:auditfixture_lib:function": audit.UNCOVERED,
        "fixture-no-target": audit.UNCOVERED,
        "fixture-old-record": audit.SKIPPED,
    }
    assert "signature changed" in findings["fixture-record:auditfixture_lib:Thing.other"].message
    assert "missing" in findings["fixture-record:auditfixture_lib:Thing.gone"].message
    assert "the fingerprint changed" in findings["fixture-record:auditfixture_lib:function"].message
    assert "fixed upstream here" in findings["fixture-fixed-record:auditfixture_lib:function"].message
    assert "no target of this patch covers" in findings["fixture-no-target"].message


# ----- the installed transformers ------------------------------------------------------------------

def _installed_transformers():
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    return audit.SourceTree(list(spec.submodule_search_locations)[0])


@pytest.mark.requires(transformers=">=5.25.0")
def test_finds_what_was_found_by_hand_on_5_25():
    """On 5.25.0 the by-hand review found Ovis2_5 (stale flag) and OlmoHybrid / LaraMini (GDN hybrids)
    uncovered. Whatever the records cover today, the audit must match each of them, and report them
    uncovered against a registry without them."""
    source = _installed_transformers()
    coverage = audit.Coverage.from_registry()
    index = audit.Index(source)
    found = by_key(audit.audit(source, coverage, kinds=("stale-loss-flag", "mixers"), index=index))
    ovis = "transformers.models.ovis2_5.modeling_ovis2_5:Ovis2_5ForConditionalGeneration"
    olmo = "transformers.models.olmo_hybrid.modeling_olmo_hybrid:OlmoHybridGatedDeltaNet"
    lara = "transformers.models.lara_mini.modeling_lara_mini:LaraMiniGatedDeltaNet"
    assert found[ovis].kind == "stale-loss-flag"
    assert found[olmo].kind == "gdn-layer" and "OlmoHybridLinearAttentionDecoderLayer" in found[olmo].message
    assert found[lara].kind == "gdn-layer" and "LaraMiniDecoderLayer" in found[lara].message
    for known in ("qwen3_next.modeling_qwen3_next:Qwen3NextGatedDeltaNet",
                  "nemotron_h.modeling_nemotron_h:NemotronHMamba2Mixer",
                  "falcon_h1.modeling_falcon_h1:FalconH1Mixer"):
        assert found[f"transformers.models.{known}"].status == audit.COVERED

    without = audit.Coverage(
        {key: first for key, first in coverage.loss_classes.items() if key[0] != ovis.split(":")[0]},
        {name: (affected, [(path, versions) for path, versions in targets
                           if "olmo_hybrid" not in path and "lara_mini" not in path])
         for name, (affected, targets) in coverage.records.items()})
    again = by_key(audit.audit(source, without, kinds=("stale-loss-flag", "mixers"), index=index))
    assert {again[key].status for key in (ovis, olmo, lara)} == {audit.UNCOVERED}


@pytest.mark.requires(transformers=">=5.25.0")
def test_the_newest_release_has_nothing_uncovered(capsys):
    """What CI runs on the newest release: every finding is covered by a record or reviewed with its
    reason (tools/audit_reviewed.py); a new class with a known bug fails here until one of them does."""
    status = audit.main(["--python", sys.executable])
    out = capsys.readouterr().out
    assert status == 0, "\n".join(line for line in out.splitlines() if line.startswith(("UNCOVERED", "DRIFT")))


@pytest.mark.requires(transformers=">=5.0.0rc2")
def test_ernie_and_gemma3_ragged_token_type_ids_are_covered():
    """FIELD.md F-4 / F-5: the ragged-batch record targets Ernie-4.5-VL-MoE (its __call__ up to 5.15,
    create_moe_mm_token_type_ids from 5.16) and Gemma3 (up to 5.3) on the installed release, so the
    ragged check reports them covered, not as a known gap."""
    source = _installed_transformers()
    found = by_key(audit.scan_processors(audit.Index(source), audit.Coverage.from_registry(), source.version))
    ernie = [f for key, f in found.items() if ".ernie4_5_vl_moe." in key]
    assert ernie and {f.status for f in ernie} == {audit.COVERED}, ernie
    assert all(f"targeted by {RAGGED}" in f.message for f in ernie)
    gemma = [f for key, f in found.items() if ".gemma3." in key]
    assert {f.status for f in gemma} <= {audit.COVERED}, gemma
    reviewed = audit.load_reviewed(audit.DEFAULT_REVIEWED)
    assert not [key for key in reviewed if key.startswith("ragged-token-type-ids:") and "ernie" in key]
