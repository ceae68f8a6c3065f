"""An ensemble entry served as one model: fan out to the members, combine their answers.

The entry is Triton's ``platform: "ensemble"`` with one ``ensemble_scheduling``
step per member. Triton would need a further model to merge the members'
outputs; here the merge is ours, named by the parameter ``ensemble.combine``
(mean of softmax probabilities by default, a weighted mean, or a majority
vote). Each member keeps its own dynamic batcher: an ensemble request becomes
one request per member, and the members are looked up at every request, so a
reloaded member is used at once. The combined output is probabilities.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from modelrepo.names import RULE, valid_name
from modelrepo.serving import ServingConfig
from modelrepo.spec import CONFIG_FILE, ModelConfigError, ModelSpec
from server.batching.types import BatcherClosedError, BatcherStats, Inputs
from server.batching.waiters import FutureWaiter
from server.core.errors import FailedPrecondition, Unavailable
from server.core.tensors import softmax

if TYPE_CHECKING:  # the manager imports this module
    from server.core.models import ModelManager

PLATFORM = "ensemble"
COMBINE_PARAM = "ensemble.combine"
WEIGHTS_PARAM = "ensemble.weights"
COMBINATIONS = ("mean_softmax", "weighted_mean", "majority_vote")

# (member name, version "" for the latest) -> the served member (.batcher, .spec)
Resolve = Callable[[str, str], Any]


@dataclass(frozen=True)
class EnsemblePlan:
    members: tuple[tuple[str, str], ...]  # (model name, version; "" = latest)
    combine: str = "mean_softmax"
    weights: tuple[float, ...] = ()

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.members]


def is_ensemble(spec: ModelSpec) -> bool:
    return spec.platform == PLATFORM


def plan_of(spec: ModelSpec) -> EnsemblePlan:
    """The members and combination of an ensemble entry; ModelConfigError naming what is wrong."""
    cfg = spec.config
    steps = cfg.ensemble_scheduling.step
    if not steps:
        raise ModelConfigError(f"ensemble '{spec.name}' has no ensemble_scheduling steps")
    members = []
    for step in steps:
        if not valid_name(step.model_name):  # checked before it is joined to any path
            raise ModelConfigError(
                f"ensemble '{spec.name}': step model_name {step.model_name[:80]!r} is not a "
                f"model name ({RULE})"
            )
        if step.model_name == spec.name:
            raise ModelConfigError(f"ensemble '{spec.name}' names itself as a member")
        version = "" if step.model_version < 0 else str(step.model_version)
        members.append((step.model_name, version))
    params = cfg.parameters
    combine = params[COMBINE_PARAM].string_value if COMBINE_PARAM in params else COMBINATIONS[0]
    if combine not in COMBINATIONS:
        raise ModelConfigError(
            f"ensemble '{spec.name}': {COMBINE_PARAM} '{combine}' is not one of {COMBINATIONS}"
        )
    weights: tuple[float, ...] = ()
    if combine == "weighted_mean":
        text = params[WEIGHTS_PARAM].string_value if WEIGHTS_PARAM in params else ""
        try:
            weights = tuple(float(w) for w in text.split(","))
        except ValueError as exc:
            raise ModelConfigError(
                f"ensemble '{spec.name}': {WEIGHTS_PARAM} '{text}' is not a comma-separated "
                f"list of {len(members)} numbers"
            ) from exc
        if len(weights) != len(members) or min(weights) < 0 or sum(weights) <= 0:
            raise ModelConfigError(
                f"ensemble '{spec.name}': {WEIGHTS_PARAM} '{text}' needs {len(members)} "
                "non-negative weights with a positive sum"
            )
    return EnsemblePlan(members=tuple(members), combine=combine, weights=weights)


def check_member(spec: ModelSpec, member: ModelSpec) -> None:
    """A member must take the ensemble's input and give its output, preprocessed alike."""
    problems = []
    if member.platform == PLATFORM:
        problems.append("it is an ensemble itself (members are models)")
    if member.input_dims != spec.input_dims:
        problems.append(f"input dims {list(member.input_dims)} != {list(spec.input_dims)}")
    if list(member.config.output[0].dims) != list(spec.config.output[0].dims):
        problems.append(
            f"output dims {list(member.config.output[0].dims)} != "
            f"{list(spec.config.output[0].dims)}"
        )
    if member.preprocess != spec.preprocess:
        problems.append(f"preprocessing {member.preprocess} != {spec.preprocess}")
    if problems:
        raise ModelConfigError(
            f"member '{member.name}' does not fit ensemble '{spec.name}': " + "; ".join(problems)
        )


def combine(plan: EnsemblePlan, outputs: list[np.ndarray]) -> np.ndarray:
    """Members' logits [M x (N, K)] -> the ensemble's probabilities (N, K)."""
    probs = np.stack([softmax(np.asarray(o, dtype=np.float64)) for o in outputs])
    if plan.combine == "weighted_mean":
        w = np.asarray(plan.weights, dtype=np.float64)
        return (np.tensordot(w, probs, axes=1) / w.sum()).astype(np.float32)
    mean = probs.mean(axis=0)
    if plan.combine == "mean_softmax":
        return mean.astype(np.float32)
    # majority vote: vote shares; the mean probability (< 1) only breaks ties
    n_members, _, classes = probs.shape
    votes = np.eye(classes)[probs.argmax(axis=2)].sum(axis=0)
    return ((votes + mean) / (n_members + 1)).astype(np.float32)


async def load_members(spec: ModelSpec, manager: ModelManager) -> EnsemblePlan:
    """Load the members not loaded yet (each with its own batcher) and check they fit;
    one that cannot load makes the ensemble unavailable with the member's reason."""
    plan = plan_of(spec)  # every member's name checked
    for member, version in plan.members:
        if (manager.opts.repository / member / CONFIG_FILE).is_file() and is_ensemble(
            await manager.read_spec(member)
        ):  # loading it here could wait on this ensemble's own lock
            raise ModelConfigError(f"member '{member}' of '{spec.name}' is an ensemble")
        entry = manager.entries.get(member)
        if entry is None or not entry.versions:
            try:
                await manager.load(member)
            except Exception as exc:
                raise Unavailable(f"member '{member}' failed to load: {exc}") from exc
        check_member(spec, manager.get(member, version).spec)
    return plan


def check_unload(name: str, entries: dict[str, Any]) -> None:
    """Refuse to unload a member of a loaded ensemble (rather than leave the ensemble
    answering from fewer members, or unloading it behind the caller's back)."""
    users = sorted(
        ens
        for ens, entry in entries.items()
        if entry.versions
        and is_ensemble(spec := max(entry.versions.items())[1].spec)
        and name in plan_of(spec).names
    )
    if users:
        raise FailedPrecondition(
            f"model '{name}' is a member of loaded ensemble(s) {users}: unload those first"
        )


class EnsembleBatcher:
    """What the data plane needs of a batcher, fanning each request out to the members.

    A request is accepted only when every member accepted its copy: a member
    that refuses (queue full, closed, gone) withdraws the copies already queued.
    """

    def __init__(
        self, plan: EnsemblePlan, resolve: Resolve, config: ServingConfig, name: str
    ) -> None:
        self.plan = plan
        self.resolve = resolve
        self.config = config
        self.name = name
        self._accepting = False
        self._lock = threading.Lock()
        self._stats = BatcherStats()

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def queue_rows(self) -> int:
        return 0  # rows wait in the members' queues, counted there

    def start(self) -> None:
        self._accepting = True

    def close(self, drain: bool = True) -> None:
        self._accepting = False

    async def stop(self, drain: bool = True) -> None:
        self.close(drain)

    def stats(self) -> BatcherStats:
        with self._lock:
            return dataclasses.replace(self._stats, batch_sizes=dict(self._stats.batch_sizes))

    def submit(
        self,
        inputs: Inputs,
        deadline: float | None = None,
        owner: Hashable | None = None,
        features: bool = False,
        trace: object = None,
        crowd: bool = False,  # members are reached from threads: each notifies at once
    ) -> FutureWaiter:
        """``submit_future`` as the data plane awaits it (``DynamicBatcher.submit``)."""
        return FutureWaiter(self.submit_future(inputs, deadline, owner, features, trace))

    def submit_future(
        self,
        inputs: Inputs,
        deadline: float | None = None,
        owner: Hashable | None = None,
        features: bool = False,
        trace: object = None,  # members are not traced: an ensemble trace has no compute times
    ) -> concurrent.futures.Future[np.ndarray]:
        if features:  # the data plane refuses class activation maps for ensembles first
            raise ValueError(f"ensemble {self.name!r} has no feature map (members differ)")
        if not self._accepting:
            raise BatcherClosedError(f"ensemble {self.name!r} is not accepting requests")
        started = time.perf_counter_ns()
        parts: list[concurrent.futures.Future[np.ndarray]] = []
        try:
            for member, version in self.plan.members:
                parts.append(
                    self.resolve(member, version).batcher.submit_future(inputs, deadline, owner)
                )
        except BaseException:
            for part in parts:
                part.cancel()
            raise
        result: concurrent.futures.Future[np.ndarray] = concurrent.futures.Future()
        result.add_done_callback(lambda f: [p.cancel() for p in parts] if f.cancelled() else None)
        remaining = [len(parts)]

        def member_done(_: concurrent.futures.Future[np.ndarray]) -> None:
            with self._lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
            self._finish(result, parts, len(inputs), started)

        for part in parts:
            part.add_done_callback(member_done)
        return result

    def _finish(
        self,
        result: concurrent.futures.Future[np.ndarray],
        parts: list[concurrent.futures.Future[np.ndarray]],
        rows: int,
        started: int,
    ) -> None:
        if not result.set_running_or_notify_cancel():
            return  # the caller gave up; its member copies were withdrawn
        failed = next((p for p in parts if p.cancelled() or p.exception() is not None), None)
        try:
            if failed is not None:
                raise (
                    failed.exception()
                    if not failed.cancelled()
                    else BatcherClosedError(f"a member of ensemble {self.name!r} was withdrawn")
                )
            combined = combine(self.plan, [p.result() for p in parts])
        except BaseException as exc:
            with self._lock:
                self._stats.failure_count += 1
            result.set_exception(exc)
            return
        elapsed = time.perf_counter_ns() - started
        with self._lock:
            self._stats.success_count += 1
            self._stats.execution_count += 1
            self._stats.inference_count += rows
            self._stats.compute_ns += elapsed
            n, ns = self._stats.batch_sizes.get(rows, (0, 0))
            self._stats.batch_sizes[rows] = (n + 1, ns + elapsed)
        result.set_result(combined)
