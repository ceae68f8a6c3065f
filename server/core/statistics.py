"""ModelStatistics and RepositoryIndex: what the manager and the batchers counted, in
Triton's messages."""

from __future__ import annotations

from protos import grpc_service_pb2 as pb
from server.core.models import ModelManager, ServedVersion, check_name, version_number


def statistics(manager: ModelManager, name: str, version: str) -> pb.ModelStatisticsResponse:
    names = [check_name(name)] if name else sorted(manager.entries)
    response = pb.ModelStatisticsResponse()
    for model in names:
        entry = manager.entries.get(model)
        if name:
            manager.get(model, version)  # raises NOT_FOUND/UNAVAILABLE
        elif (
            entry is None
            or not entry.versions
            or (version and version_number(version) not in entry.versions)
        ):
            continue  # all models: skip those without the asked version
        chosen = [manager.get(model, version)] if version else entry.versions.values()
        for served in chosen:
            response.model_stats.append(_model_statistics(served))
    return response


def repository_index(manager: ModelManager, ready_only: bool) -> pb.RepositoryIndexResponse:
    response = pb.RepositoryIndexResponse()
    names = set(manager.names_in_repository()) | set(manager.entries)
    for name in sorted(names):
        entry = manager.entries.get(name)
        if entry is not None and entry.versions:
            for version in sorted(entry.versions):
                response.models.add(name=name, version=str(version), state="READY")
        elif not ready_only:
            state = entry.state if entry else "UNAVAILABLE"
            reason = entry.reason if entry else "not loaded"
            response.models.add(name=name, state=state, reason=reason)
    return response


def _duration(count: int, ns: int) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=count, ns=ns)


def _model_statistics(served: ServedVersion) -> pb.ModelStatistics:
    stats = served.batcher.stats()
    return pb.ModelStatistics(
        name=served.spec.name,
        version=str(served.version),
        last_inference=served.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(*served.success_ns),
            fail=_duration(*served.failure_ns),
            queue=_duration(stats.success_count, stats.queue_ns),
            compute_input=_duration(*served.preprocess_ns),
            compute_infer=_duration(stats.execution_count, stats.compute_ns),
            compute_output=_duration(*served.output_ns),
        ),
        # One response per request (not decoupled): Triton keys it "0".
        response_stats={
            "0": pb.InferResponseStatistics(
                compute_infer=_duration(stats.success_count, stats.request_compute_ns),
                compute_output=_duration(*served.output_ns),
                success=_duration(*served.success_ns),
                fail=_duration(*served.failure_ns),
                empty_response=_duration(0, 0),
                cancel=_duration(0, 0),
            )
        },
        batch_stats=[
            pb.InferBatchStatistics(batch_size=size, compute_infer=_duration(n, ns))
            for size, (n, ns) in sorted(stats.batch_sizes.items())
        ],
    )
