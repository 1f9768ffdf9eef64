"""bf16 on the CPU where it pays: the flag check behind ``cpu_bf16: auto``."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from nudiff.diffusion.synthesis import SamplingSettings
from nudiff.diffusion.training import DiffusionTraining
from nudiff.runtime import cpu_has_bf16, resolve_cpu_bf16

SCHEMA = yaml.safe_load((Path(__file__).parents[1] / "config" / "schema.yaml").read_text())

FLAGS = "processor\t: {n}\nflags\t\t: fpu sse2 avx2 avx512f {extra}\n\n"


@pytest.mark.parametrize(("extra", "expected"), [("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("", False)])
def test_cpu_has_bf16_reads_the_cpu_flags(tmp_path, extra, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(FLAGS.format(n=0, extra=extra) + FLAGS.format(n=1, extra=extra))
    assert cpu_has_bf16(cpuinfo) is expected


def test_unreadable_flags_mean_no_bf16(tmp_path):
    assert cpu_has_bf16(tmp_path / "missing") is False


def test_auto_is_resolved_to_a_bool_in_the_settings():
    assert resolve_cpu_bf16(True) is True and resolve_cpu_bf16(False) is False
    assert resolve_cpu_bf16("auto") is cpu_has_bf16()
    assert DiffusionTraining(cpu_bf16="auto").cpu_bf16 is cpu_has_bf16()
    assert SamplingSettings(cpu_bf16="auto").cpu_bf16 is cpu_has_bf16()
    with pytest.raises(ValueError, match="cpu_bf16"):
        resolve_cpu_bf16("yes")


@pytest.mark.parametrize("value", [True, False, "auto"])
def test_the_schema_takes_true_false_and_auto(value):
    training = {"$defs": SCHEMA["$defs"], **SCHEMA["$defs"]["diffusion_training"]}
    jsonschema.validate({"cpu_bf16": value}, training)
    sampling = SCHEMA["properties"]["diffusion"]["properties"]["sampling"]
    jsonschema.validate({"cpu_bf16": value}, sampling)


def test_the_schema_refuses_other_values():
    sampling = SCHEMA["properties"]["diffusion"]["properties"]["sampling"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"cpu_bf16": "yes"}, sampling)
