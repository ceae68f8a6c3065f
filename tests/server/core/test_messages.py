"""The data plane's own request and answer types, in process: BYTES elements in as a list
of bytes and classification strings out as ``str``, with no protobuf and no framing,
answered as the framed wire form (gRPC raw contents) is answered."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import numpy as np

from protos import grpc_service_pb2 as pb
from server.core import converters
from server.core.messages import InferRequest, InferResponse, InputTensor, RequestedOutput
from server.core.wiring import build_core
from server.settings import ModelSettings, Settings
from server.settings.limits import RequestLimits
from tests.kit.stress import encoded

IMAGES = [encoded("PNG", (32, 32), mode="L"), encoded("JPEG", (48, 40))]


def _answers(repo: Path, requests: list[InferRequest]) -> list[InferResponse]:
    async def run() -> list[InferResponse]:
        core = build_core(Settings(models=ModelSettings(repository=repo, names=("lenet5",))))
        await core.manager.load("lenet5")
        try:
            return [await core.plane.infer(r, None) for r in requests]
        finally:
            await core.manager.close()

    return asyncio.run(run())


def _framed() -> InferRequest:
    message = pb.ModelInferRequest(model_name="lenet5")
    message.inputs.add(name="input", datatype="BYTES", shape=[2])
    message.raw_input_contents.append(b"".join(struct.pack("<I", len(e)) + e for e in IMAGES))
    message.outputs.add(name="logits").parameters["classification"].int64_param = 3
    return converters.request_from_pb(message, RequestLimits())


def test_bytes_elements_in_and_strings_out_without_framing(serve_repo: Path) -> None:
    top3 = [RequestedOutput("logits", {"classification": 3})]
    listed = InferRequest(
        "lenet5", id="req-1", inputs=[InputTensor("input", "BYTES", [2], IMAGES)], outputs=top3
    )
    plain = InferRequest("lenet5", inputs=[InputTensor("input", "BYTES", [2, 1], list(IMAGES))])

    answer, framed, logits_answer = _answers(serve_repo, [listed, _framed(), plain])

    assert (answer.model_name, answer.model_version, answer.id) == ("lenet5", "1", "req-1")
    (strings,) = answer.outputs
    assert (strings.datatype, strings.shape) == ("BYTES", [2, 3])
    assert all(isinstance(s, str) for s in strings.data)
    (logits,) = logits_answer.outputs
    assert (logits.datatype, logits.shape) == ("FP32", [2, 10])
    for row, parts in zip(logits.data, (strings.data[:3], strings.data[3:]), strict=True):
        fields = [s.split(":") for s in parts]
        top = list(np.argsort(-row, kind="stable")[:3])
        assert [int(index) for _, index, _ in fields] == top
        np.testing.assert_allclose([float(score) for score, _, _ in fields], row[top], atol=1e-5)
    assert framed.outputs[0].data == strings.data  # the wire's framed form: the same answer
