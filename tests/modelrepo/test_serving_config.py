"""One serving configuration: its validation, its defaults, and how config.pbtxt maps to it.

The server, the exporter and the tuner all go through ``modelrepo.serving``; these
tests pin the rules its module doc states, so the documented defaults are the ones
applied.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import text_format

from exporter.cli import build_parser
from modelrepo import keys
from modelrepo.serving import DEFAULT, ServingConfig, read_serving, write_serving
from modelrepo.spec import fixed_dims, image_dims
from protos import model_config_pb2 as mc


def _parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig(name="m"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size 0: must be >= 1"),
        ({"max_batch_size": 4, "preferred_batch_sizes": (2, 5)}, r"\[5\]: allowed 1..max_batch"),
        ({"preferred_batch_sizes": (0,)}, r"preferred batch sizes \[0\]"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us -1: must be >= 0"),
        ({"max_queue_size": 0}, "max_queue_size 0: must be >= 1 image"),
        ({"instance_count": 0}, "instance_count 0 must be >= 1"),
        ({"intra_op_threads": -1}, "intra_op_threads -1 >= 0"),
        ({"instance_kind": "tpu"}, "instance kind 'tpu': choose from"),
    ],
)
def test_validation_names_the_bad_value(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServingConfig(**kwargs)


def test_the_documented_defaults() -> None:
    assert DEFAULT == ServingConfig(
        max_batch_size=16,
        preferred_batch_sizes=(4, 8),
        max_queue_delay_us=1000,
        instance_count=1,
        intra_op_threads=0,
        max_queue_size=64,
        instance_kind="auto",
        dynamic_batching=True,
    )
    # The exporter's command line offers exactly these.
    args = build_parser().parse_args(["export", "lenet5"])
    assert (args.max_batch_size, tuple(args.preferred_batch_size)) == (16, (4, 8))
    assert (args.max_queue_delay_us, args.instances, args.instance_kind) == (1000, 1, "auto")


def test_a_queue_holds_a_full_batch_and_preferred_sizes_are_a_set() -> None:
    cfg = ServingConfig(max_batch_size=128, preferred_batch_sizes=(8, 4, 8))
    assert cfg.max_queue_size == 128 and cfg.preferred_batch_sizes == (4, 8)
    assert cfg.target_batch_size == 8
    assert ServingConfig(preferred_batch_sizes=()).target_batch_size == 16


def test_absent_fields_read_as_protobuf_zero_except_the_queue_bound() -> None:
    cfg = read_serving(_parse("max_batch_size: 8 dynamic_batching { }"))
    assert cfg == ServingConfig(8, (), 0, 1, 0, max_queue_size=DEFAULT.max_queue_size)
    alone = read_serving(_parse("max_batch_size: 8"))  # no dynamic_batching block
    assert not alone.dynamic_batching
    assert not read_serving(_parse("max_batch_size: 0 dynamic_batching { }")).dynamic_batching


def test_the_file_is_read_as_written() -> None:
    text = """
max_batch_size: 32
instance_group { count: 2 kind: KIND_CPU }
instance_group { count: 1 kind: KIND_CPU }
dynamic_batching {
  preferred_batch_size: [16, 64]
  max_queue_delay_microseconds: 250
  default_queue_policy { max_queue_size: 100 }
}
parameters { key: "intra_op_thread_count" value { string_value: "2" } }
"""
    cfg = read_serving(_parse(text))
    assert cfg == ServingConfig(32, (16,), 250, 3, 2, 100, "cpu")  # 64 > max: dropped


def test_overrides_win_before_the_rules_apply() -> None:
    config = _parse("max_batch_size: 16 dynamic_batching { preferred_batch_size: [4, 8] }")
    cfg = read_serving(config, max_batch_size=4, max_queue_size=None, instance_count=3)
    assert (cfg.max_batch_size, cfg.preferred_batch_sizes, cfg.instance_count) == (4, (4,), 3)
    assert cfg.max_queue_size == DEFAULT.max_queue_size
    with pytest.raises(ValueError, match=r"unknown serving settings \['batch'\]"):
        read_serving(config, batch=4)
    with pytest.raises(ValueError, match=r"preferred batch sizes \[8\]"):
        read_serving(config, max_batch_size=4, preferred_batch_sizes=(8,))


def test_a_bad_thread_count_names_the_parameter() -> None:
    config = _parse('parameters { key: "intra_op_thread_count" value { string_value: "two" } }')
    with pytest.raises(ValueError, match="parameter intra_op_thread_count='two'"):
        read_serving(config)


@pytest.mark.parametrize(
    "serving",
    [
        DEFAULT,
        ServingConfig(8, (2,), 0, 2, 3, 10, "gpu"),
        ServingConfig(4, (), 0, 1, 0, dynamic_batching=False),
    ],
)
def test_write_then_read_round_trips_and_keeps_the_rest(serving: ServingConfig) -> None:
    config = _parse(
        'input { name: "x" dims: [3, -1, -1] } '
        'parameters { key: "preprocess.crop_size" value { string_value: "224" } }'
    )
    write_serving(config, serving)
    back = text_format.Parse(text_format.MessageToString(config), mc.ModelConfig())
    assert read_serving(back) == serving
    assert back.input[0].dims == [3, -1, -1]
    assert back.parameters[keys.CROP_SIZE].string_value == "224"
    assert (keys.INTRA_OP_THREADS in back.parameters) == bool(serving.intra_op_threads)


def test_a_dynamic_dimension_takes_the_crop_size() -> None:
    config = _parse('input { name: "x" dims: [3, -1, -1] }')
    assert image_dims(config) == (3, 224, 224)  # Preprocess's default crop, as the server's
    config.parameters[keys.CROP_SIZE].string_value = "160"
    assert image_dims(config) == (3, 160, 160)
    assert fixed_dims([1, 32, 32], 160) == (1, 32, 32)
