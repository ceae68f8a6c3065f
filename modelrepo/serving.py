"""The serving half of config.pbtxt: one type, one validation, one set of defaults.

``ServingConfig`` is what the exporter writes, what the server runs (with its
command-line overrides), and what the batching tuner searches; ``read_serving``
and ``write_serving`` are the only translations to and from a ``ModelConfig``.

The defaults are the exporter's (a fresh export writes exactly them):
``max_batch_size`` 16, ``preferred_batch_size`` 4 and 8, a queue delay of 1000 µs,
64 queued images, one instance of kind AUTO, ONNX Runtime's own thread count.
Why these: the batcher dispatches at once while an instance is idle, so the delay
only shapes the batches formed while every instance is busy; there 1 ms lets a
preferred size fill at load without adding a visible cost at low load. 64 images
are four full batches: a burst beyond that is refused at once (RESOURCE_EXHAUSTED)
instead of waiting behind work the deadline will not allow.

Reading a config.pbtxt follows protobuf's (and Triton's) meaning of an absent
field, which is zero: no ``dynamic_batching`` block (or ``max_batch_size: 0``)
means every request runs alone, an absent delay means 0, absent preferred sizes
mean "fill to max_batch_size". The one exception is the queue bound, where zero
means unbounded to Triton: the server bounds it to the default above (64 images).
A queue never holds less than one full batch: ``max_queue_size`` is raised to
``max_batch_size`` where it is smaller.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from modelrepo import keys
from modelrepo.spec import ModelConfigError
from protos import model_config_pb2 as mc

InstanceKind = Literal["auto", "cpu", "gpu"]
KINDS: dict[str, int] = {
    "auto": mc.ModelInstanceGroup.KIND_AUTO,
    "cpu": mc.ModelInstanceGroup.KIND_CPU,
    "gpu": mc.ModelInstanceGroup.KIND_GPU,
}
_KIND_NAMES = {value: name for name, value in KINDS.items()}


@dataclass(frozen=True)
class ServingConfig:
    """Triton's ``max_batch_size``, ``dynamic_batching`` and ``instance_group``, plus the
    intra-op thread count: everything that decides how a model is batched and run."""

    max_batch_size: int = 16
    preferred_batch_sizes: tuple[int, ...] = (4, 8)
    max_queue_delay_us: int = 1000
    instance_count: int = 1
    intra_op_threads: int = 0  # 0: ONNX Runtime's default
    max_queue_size: int = 64  # images waiting, not requests
    instance_kind: InstanceKind = "auto"
    dynamic_batching: bool = True  # False: every request is its own batch

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size {self.max_batch_size}: must be >= 1")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(
                f"preferred batch sizes {bad}: allowed 1..max_batch_size={self.max_batch_size}"
            )
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us {self.max_queue_delay_us}: must be >= 0")
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size {self.max_queue_size}: must be >= 1 image")
        if self.instance_count < 1 or self.intra_op_threads < 0:
            raise ValueError(
                f"instance_count {self.instance_count} must be >= 1 and intra_op_threads "
                f"{self.intra_op_threads} >= 0 (0 = runtime default)"
            )
        if self.instance_kind not in KINDS:
            raise ValueError(f"instance kind '{self.instance_kind}': choose from {list(KINDS)}")
        # A queue always holds one full batch (else max_batch_size could never form).
        object.__setattr__(self, "max_queue_size", max(self.max_queue_size, self.max_batch_size))
        # Triton treats the preferred sizes as a set; one spelling keeps equal configs equal.
        object.__setattr__(
            self, "preferred_batch_sizes", tuple(sorted(set(self.preferred_batch_sizes)))
        )

    @property
    def target_batch_size(self) -> int:
        """The size worth waiting for: the largest preferred, else the maximum."""
        return max(self.preferred_batch_sizes, default=self.max_batch_size)

    @property
    def label(self) -> str:
        pref = ",".join(map(str, self.preferred_batch_sizes)) or "-"
        threads = self.intra_op_threads or "auto"
        return (
            f"max {self.max_batch_size} pref {pref} delay {self.max_queue_delay_us}us "
            f"{self.instance_count}x{threads}"
        )

    def changed(self, **changes: Any) -> ServingConfig:
        """A copy with ``changes``; preferred sizes above a new maximum are dropped."""
        merged = {**dataclasses.asdict(self), **changes}
        merged["preferred_batch_sizes"] = tuple(
            b for b in merged["preferred_batch_sizes"] if b <= merged["max_batch_size"]
        )
        return ServingConfig(**merged)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "label": self.label}


FIELDS = tuple(f.name for f in dataclasses.fields(ServingConfig))
DEFAULT = ServingConfig()


def _int_param(config: mc.ModelConfig, key: str) -> int:
    text = config.parameters[key].string_value if key in config.parameters else ""
    try:
        return int(text) if text else 0
    except ValueError as exc:
        raise ModelConfigError(
            f"model '{config.name}': parameter {key}='{text}' is not an integer"
        ) from exc


def read_serving(config: mc.ModelConfig, **overrides: Any) -> ServingConfig:
    """``config`` as the server runs it (see the module doc); ``overrides`` not None replace
    what the file says (the server's command line) before the rules apply."""
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown serving settings {unknown}; known: {list(FIELDS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    dyn = config.dynamic_batching if config.HasField("dynamic_batching") else None
    groups = config.instance_group
    max_batch = given.get("max_batch_size") or max(config.max_batch_size, 1)
    values: dict[str, Any] = {
        "max_batch_size": max_batch,
        "preferred_batch_sizes": tuple(
            b for b in (dyn.preferred_batch_size if dyn else ()) if b <= max_batch
        ),
        "max_queue_delay_us": dyn.max_queue_delay_microseconds if dyn else 0,
        "instance_count": sum(g.count or 1 for g in groups) or 1,
        "intra_op_threads": _int_param(config, keys.INTRA_OP_THREADS),
        "max_queue_size": (dyn.default_queue_policy.max_queue_size if dyn else 0),
        "instance_kind": _KIND_NAMES.get(groups[0].kind, "auto") if groups else "auto",
        "dynamic_batching": dyn is not None and config.max_batch_size > 0,
        **given,
    }
    values["max_queue_size"] = values["max_queue_size"] or DEFAULT.max_queue_size
    return ServingConfig(**values)


def write_serving(config: mc.ModelConfig, serving: ServingConfig) -> None:
    """Set ``config``'s serving fields to ``serving`` (in place; everything else is kept)."""
    config.max_batch_size = serving.max_batch_size
    if serving.dynamic_batching:
        dyn = config.dynamic_batching
        del dyn.preferred_batch_size[:]
        dyn.preferred_batch_size.extend(serving.preferred_batch_sizes)
        dyn.max_queue_delay_microseconds = serving.max_queue_delay_us
        dyn.default_queue_policy.max_queue_size = serving.max_queue_size
    else:
        config.ClearField("dynamic_batching")
    del config.instance_group[:]
    config.instance_group.add(count=serving.instance_count, kind=KINDS[serving.instance_kind])
    if serving.intra_op_threads:
        config.parameters[keys.INTRA_OP_THREADS].string_value = str(serving.intra_op_threads)
    elif keys.INTRA_OP_THREADS in config.parameters:
        del config.parameters[keys.INTRA_OP_THREADS]
