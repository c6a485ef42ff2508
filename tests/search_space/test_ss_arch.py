"""ArchConfig: canonical JSON, stable arch_id, canonicalization, validation errors."""

from __future__ import annotations

import json

import pytest
from ss_helpers import TEMPORAL_KINDS, K, choice_for, mixed_arch

from search_space.arch import ArchConfig, StageChoice
from search_space.errors import ConfigError
from search_space.geometry import validate_arch

# The canonical JSON of GOLDEN_ARCH hashes to this id. If it changes, every stored study,
# cache and exported arch file is orphaned: bump SCHEMA_VERSION instead of editing this.
GOLDEN_ID = "fe70b390eb10"


def golden_arch(tiny, tiny_task) -> ArchConfig:
    return ArchConfig.create("tiny", tiny_task, {
        "down1": StageChoice(K.ATTN1D, 1, heads=4),
        "up1": StageChoice(K.CONV3D, 2, kernel_t=3, kernel_s=3)}, tiny.stage_ids)


def test_arch_id_is_stable(tiny, tiny_task):
    assert golden_arch(tiny, tiny_task).arch_id == GOLDEN_ID


def test_json_round_trip(tiny, tiny_task):
    arch = mixed_arch(tiny, tiny_task)
    again = ArchConfig.from_json(arch.to_json())
    assert again == arch and again.arch_id == arch.arch_id
    assert ArchConfig.from_json(arch.to_json(indent=2)).arch_id == arch.arch_id
    assert json.loads(arch.to_json()) == arch.to_dict()


def test_arch_file_round_trip(tiny, tiny_task, tmp_path):
    arch = golden_arch(tiny, tiny_task)
    p = tmp_path / "a.json"
    p.write_text(json.dumps({**arch.to_dict(), "arch_id": arch.arch_id}))
    assert ArchConfig.load(str(p)) == arch
    p.write_text(json.dumps({**arch.to_dict(), "arch_id": "000000000000"}))
    with pytest.raises(ConfigError, match="arch_id"):
        ArchConfig.load(str(p))


@pytest.mark.parametrize("kind", TEMPORAL_KINDS, ids=lambda k: k.value)
def test_inert_fields_are_canonicalized(kind):
    base = choice_for(kind)
    noisy = StageChoice(kind, base.count, heads=base.heads or 7, kernel_t=base.kernel_t or 9,
                        kernel_s=base.kernel_s or 11)
    if kind.is_attention:
        assert noisy == StageChoice(kind, base.count, heads=base.heads)
        assert (noisy.kernel_t, noisy.kernel_s) == (0, 0)
    else:
        assert noisy.heads == 0 and noisy.kernel_t == 3
        assert noisy.kernel_s == (3 if kind.uses_kernel_s else 0)


def test_equal_networks_get_equal_ids(tiny, tiny_task):
    def arch(c):
        return ArchConfig.create("tiny", tiny_task, {"down1": c}, tiny.stage_ids)
    none_ids = {arch(StageChoice()).arch_id, arch(StageChoice(K.CONV1D, 0, kernel_t=3)).arch_id,
                arch(StageChoice(K.NONE, 2, heads=4, kernel_t=5)).arch_id}
    assert len(none_ids) == 1
    assert arch(StageChoice(K.ATTN1D, 1, heads=4, kernel_t=5, kernel_s=3)).arch_id == \
        arch(StageChoice(K.ATTN1D, 1, heads=4)).arch_id
    assert arch(StageChoice(K.CONV1D, 1, heads=8, kernel_t=3, kernel_s=5)).arch_id == \
        arch(StageChoice(K.CONV1D, 1, kernel_t=3)).arch_id
    # and different networks differ
    assert arch(StageChoice(K.CONV1D, 1, kernel_t=3)).arch_id != \
        arch(StageChoice(K.CONV1D, 1, kernel_t=5)).arch_id


@pytest.mark.parametrize("patch, fragment", [
    ({"down1": {"kind": "attn1d", "count": 1, "heads": 3}}, "stages.down1.heads"),
    ({"down1": {"kind": "attn1d", "count": 2, "heads": 4}}, "stages.down1.count"),
    ({"down1": {"kind": "conv1d", "count": 1, "kernel_t": 4}}, "stages.down1.kernel_t"),
    ({"down1": {"kind": "conv3d", "count": 1, "kernel_t": 3}}, "stages.down1.kernel_s"),
])
def test_inconsistent_arch_is_rejected(tiny, tiny_task, patch, fragment):
    d = golden_arch(tiny, tiny_task).to_dict()
    d["stages"].update(patch)
    arch = ArchConfig.from_dict(d)
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        validate_arch(tiny, arch)


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d["stages"].update(down1={"kind": "lstm", "count": 1}), "unknown temporal kind"),
    (lambda d: d["stages"].update(down1={"kind": "conv1d", "count": "1"}), "expected an integer"),
    (lambda d: d["stages"]["down1"].update(extra=1), "unknown key"),
    (lambda d: d.update(schema_version=99), "schema_version"),
    (lambda d: d.pop("task"), "missing key 'task'"),
    (lambda d: d["task"].update(num_frames=0), "num_frames"),
])
def test_malformed_arch_dict_names_the_key(tiny, tiny_task, mutate, fragment):
    d = json.loads(golden_arch(tiny, tiny_task).to_json())
    mutate(d)
    with pytest.raises(ConfigError, match=fragment) as e:
        ArchConfig.from_dict(d)
    assert "\n" not in str(e.value)


def test_truncated_json_is_a_config_error(tiny, tiny_task):
    with pytest.raises(ConfigError, match="not valid JSON"):
        ArchConfig.from_json(golden_arch(tiny, tiny_task).to_json()[:40])
