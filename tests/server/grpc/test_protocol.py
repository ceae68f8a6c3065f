"""Our protos are wire-compatible with Triton's, checked against tritonclient's own code.

tritonclient.grpc ships the code generated from Triton's protos
(`tritonclient.grpc.service_pb2` for grpc_service.proto and
`tritonclient.grpc.model_config_pb2`). Those modules and ours define the same
`inference.*` names in protobuf's default descriptor pool, and protobuf refuses
a second definition ("duplicate symbol"), so tritonclient is never imported in
this process: everything that needs it runs in a child interpreter. The child
sends back tritonclient's serialized file descriptors, which are compared with
ours here in a private DescriptorPool, and the bytes of messages built or
parsed by tritonclient's classes.

This module compares the descriptors (messages, fields, enums, RPCs, stub
paths); test_protocol_wire.py compares bytes on the wire.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    FileDescriptor,
)

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_config_pb2 as mc
from tests.kit.triton_helpers import run_with_tritonclient, unb64

SERVICE = "inference.GRPCInferenceService"

# The RPCs the architecture promises, plus the ones declared for a clean UNIMPLEMENTED.
REQUIRED_RPCS = {
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
}

# Fields of Triton's current protos that postdate the revision tritonclient 2.41
# was generated from. An older peer skips them as unknown fields, so they are
# compatible on the wire. Once tritonclient knows one, it is compared like any other.
NEWER_THAN_TRITONCLIENT = {
    ("inference.ModelConfig", 25): "runtime",
    ("inference.ModelStatistics", 9): "response_stats",
}
# Messages of Triton's current protos that tritonclient 2.41 does not define at all.
MESSAGES_NEWER_THAN_TRITONCLIENT = {
    "inference.InferResponseStatistics",
    "inference.ModelStatistics.ResponseStatsEntry",
}


def walk_messages(messages: Iterator[Descriptor]) -> Iterator[Descriptor]:
    for message in messages:
        yield message
        yield from walk_messages(iter(message.nested_types))


def messages_of(file: FileDescriptor) -> list[Descriptor]:
    return list(walk_messages(iter(file.message_types_by_name.values())))


def enums_of(file: FileDescriptor) -> list[EnumDescriptor]:
    enums = list(file.enum_types_by_name.values())
    for message in messages_of(file):
        enums.extend(message.enum_types)
    return enums


def field_signature(field: FieldDescriptor) -> dict[str, object]:
    """What has to agree for two peers to read each other's bytes of this field."""
    named = field.message_type or field.enum_type
    return {
        "name": field.name,
        "type": field.type,
        "repeated": field.is_repeated,
        "type_name": named.full_name if named is not None else None,
        "oneof": field.containing_oneof.name if field.containing_oneof else None,
    }


OUR_MESSAGES = messages_of(pb.DESCRIPTOR) + messages_of(mc.DESCRIPTOR)
OUR_ENUMS = enums_of(pb.DESCRIPTOR) + enums_of(mc.DESCRIPTOR)

TRITON_DESCRIPTORS = """
    import base64, json
    from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

    class Recorder:
        def __init__(self):
            self.paths = {}
        def __getattr__(self, kind):
            def record(path, *args, **kwargs):
                self.paths[path] = kind
            return record

    channel = Recorder()
    service_pb2_grpc.GRPCInferenceServiceStub(channel)
    print(json.dumps({
        "modules": [model_config_pb2.__name__, service_pb2.__name__],
        "files": [base64.b64encode(m.DESCRIPTOR.serialized_pb).decode()
                  for m in (model_config_pb2, service_pb2)],
        "stub_paths": channel.paths,
    }))
"""


@pytest.fixture(scope="module")
def triton() -> dict:
    """tritonclient's descriptors, in a pool of their own, and its stub's method paths."""
    out = run_with_tritonclient(TRITON_DESCRIPTORS)
    assert out["modules"] == ["tritonclient.grpc.model_config_pb2", "tritonclient.grpc.service_pb2"]
    pool = descriptor_pool.DescriptorPool()
    files = [pool.AddSerializedFile(unb64(blob)) for blob in out["files"]]
    assert [f.name for f in files] == ["model_config.proto", "grpc_service.proto"]
    return {"pool": pool, "service_file": files[1], "stub_paths": out["stub_paths"]}


# ------------------------------------------------------------------ descriptors


def test_the_walk_covers_nested_and_map_entry_messages() -> None:
    names = {m.full_name for m in OUR_MESSAGES}
    assert {
        "inference.ModelInferRequest.InferInputTensor",
        "inference.ModelInferRequest.InferRequestedOutputTensor",
        "inference.ModelInferRequest.InferRequestedOutputTensor.ParametersEntry",
        "inference.ModelInferResponse.InferOutputTensor",
        "inference.ModelMetadataResponse.TensorMetadata",
        "inference.RepositoryIndexResponse.ModelIndex",
        "inference.ModelConfig",
        "inference.ModelVersionPolicy.Latest",
        "inference.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator",
    } <= names
    assert pb.ModelConfigResponse.DESCRIPTOR.fields_by_name["config"].message_type is (
        mc.ModelConfig.DESCRIPTOR
    )


@pytest.mark.parametrize("ours", OUR_MESSAGES, ids=lambda m: m.full_name)
def test_message_matches_tritonclient(ours: Descriptor, triton: dict) -> None:
    if ours.full_name in MESSAGES_NEWER_THAN_TRITONCLIENT:
        with pytest.raises(KeyError):
            triton["pool"].FindMessageTypeByName(ours.full_name)
        return
    theirs = triton["pool"].FindMessageTypeByName(ours.full_name)
    assert ours.GetOptions().map_entry == theirs.GetOptions().map_entry
    for field in ours.fields:
        if field.number not in theirs.fields_by_number:
            assert NEWER_THAN_TRITONCLIENT.get((ours.full_name, field.number)) == field.name, (
                f"{ours.full_name}: Triton has no field number {field.number} ({field.name})"
            )
            continue
        assert field_signature(field) == field_signature(theirs.fields_by_number[field.number]), (
            f"{ours.full_name} field {field.number}"
        )


def test_grpc_service_proto_defines_every_triton_message_and_field(triton: dict) -> None:
    """Unlike model_config.proto (a subset), nothing a client may send is unknown to us."""
    ours = {m.full_name: m for m in messages_of(pb.DESCRIPTOR)}
    missing = [m.full_name for m in messages_of(triton["service_file"]) if m.full_name not in ours]
    assert not missing
    missing_fields = [
        f"{theirs.full_name}.{field.name} = {field.number}"
        for theirs in messages_of(triton["service_file"])
        for field in theirs.fields
        if field.number not in ours[theirs.full_name].fields_by_number
    ]
    assert not missing_fields


@pytest.mark.parametrize("ours", OUR_ENUMS, ids=lambda e: e.full_name)
def test_enum_values_match_tritonclient(ours: EnumDescriptor, triton: dict) -> None:
    theirs = triton["pool"].FindEnumTypeByName(ours.full_name)
    for value in ours.values:
        assert value.name in theirs.values_by_name, f"{ours.full_name}.{value.name}"
        assert theirs.values_by_name[value.name].number == value.number, value.name


def test_service_rpcs_match_tritonclient(triton: dict) -> None:
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton["pool"].FindServiceByName(SERVICE)
    assert ours.full_name == theirs.full_name == SERVICE
    assert {m.name for m in ours.methods} >= REQUIRED_RPCS
    assert {m.name for m in ours.methods} == {m.name for m in theirs.methods}
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert (
            method.input_type.full_name,
            method.output_type.full_name,
            method.client_streaming,
            method.server_streaming,
        ) == (
            other.input_type.full_name,
            other.output_type.full_name,
            other.client_streaming,
            other.server_streaming,
        ), method.name
    stream = ours.methods_by_name["ModelStreamInfer"]
    assert stream.client_streaming and stream.server_streaming


class _RecordingChannel:
    """Stands in for a grpc.Channel and records which method paths a stub registers."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}

    def __getattr__(self, kind: str):
        def record(path: str, *args: object, **kwargs: object) -> None:
            self.paths[path] = kind

        return record


def test_our_stub_calls_the_same_method_paths_as_tritonclient(triton: dict) -> None:
    channel = _RecordingChannel()
    pb_grpc.GRPCInferenceServiceStub(channel)
    assert channel.paths == triton["stub_paths"]
    assert channel.paths["/inference.GRPCInferenceService/ModelInfer"] == "unary_unary"
    assert channel.paths["/inference.GRPCInferenceService/ModelStreamInfer"] == "stream_stream"
