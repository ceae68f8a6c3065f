"""Counts one inference request may carry, checked before any per-item work.

A request naming the same output 60,000 times cost 35 s of event loop while the
duplicate check was quadratic; even linear, every item costs a protobuf entry, a dict
lookup and an error path. Every edge checks before it translates a request: gRPC and
the cluster replica on the parsed message (server/core/converters.py), HTTP on the
JSON lists before it builds one entry from them; the data plane checks again.
"""

from __future__ import annotations

from protos import grpc_service_pb2 as pb
from server.core.errors import InvalidArgument
from server.core.messages import InferRequest
from server.settings.limits import RequestLimits


def check_counts(
    limits: RequestLimits, inputs: int, outputs: int, parameters: int, where: str = "request"
) -> None:
    """INVALID_ARGUMENT naming the count and its cap when one is over."""
    if (
        inputs <= limits.max_inputs
        and outputs <= limits.max_outputs
        and parameters <= limits.max_parameters
    ):
        return  # every request passes here, twice: no tuples built when all is well
    for what, count, cap, field in (
        ("inputs", inputs, limits.max_inputs, "max_inputs"),
        ("outputs", outputs, limits.max_outputs, "max_outputs"),
        ("parameters", parameters, limits.max_parameters, "max_parameters"),
    ):
        if count > cap:
            raise InvalidArgument(
                f"{where} has {count:,} {what}; the server accepts at most {cap} "
                f"(request limit {field})"
            )


def check_message(limits: RequestLimits, request: pb.ModelInferRequest | InferRequest) -> None:
    """The caps on a parsed protobuf request, or on the data plane's own form of one."""
    check_counts(limits, len(request.inputs), len(request.outputs), 0)
    parameters = len(request.parameters)
    parameters += sum(len(t.parameters) for t in request.inputs)
    parameters += sum(len(t.parameters) for t in request.outputs)
    check_counts(limits, 0, 0, parameters)
