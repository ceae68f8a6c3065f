"""Our messages and tritonclient's read each other's bytes, over raw bytes and real gRPC.

tritonclient cannot be imported in this process (its generated protobuf modules
and ours define the same ``inference.*`` names in protobuf's default descriptor
pool: see test_protocol.py, which compares the descriptors themselves), so
every tritonclient step runs in a child interpreter and exchanges serialized
messages with this one.
"""

from __future__ import annotations

import struct

import numpy as np
from google.protobuf import json_format

from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from tests.kit.triton_helpers import run_with_tritonclient, unb64


def bytes_tensor(items: list[bytes]) -> bytes:
    """KServe BYTES tensor in raw form: each element a 4-byte little-endian length, then data."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


IMAGE = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4) / 7.0
JPEG = b"\xff\xd8\xff\xe0fake-jpeg\x00\xff\xd9"

REQUEST_FROM_TRITONCLIENT = """
    import base64, json, struct
    import numpy as np
    from google.protobuf import json_format
    from tritonclient.grpc import service_pb2

    image = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4) / 7.0
    jpeg = b"\\xff\\xd8\\xff\\xe0fake-jpeg\\x00\\xff\\xd9"
    request = service_pb2.ModelInferRequest(
        model_name="mobilenet_v2", model_version="1", id="req-7"
    )
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(image.shape))
    tensor.parameters["binary_data_size"].int64_param = image.nbytes
    request.raw_input_contents.append(image.tobytes())
    encoded = request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(struct.pack("<I", len(jpeg)) + jpeg)
    output = request.outputs.add(name="logits")
    output.parameters["classification"].int64_param = 5
    request.parameters["priority"].uint64_param = 3
    request.parameters["note"].string_param = "hello"
    request.parameters["scale"].double_param = 0.5
    print(json.dumps({
        "bytes": base64.b64encode(request.SerializeToString()).decode(),
        "dict": json_format.MessageToDict(request, preserving_proto_field_name=True),
    }))
"""


def test_infer_request_built_by_tritonclient_parses_with_ours() -> None:
    out = run_with_tritonclient(REQUEST_FROM_TRITONCLIENT)
    request = pb.ModelInferRequest.FromString(unb64(out["bytes"]))

    assert (request.model_name, request.model_version, request.id) == ("mobilenet_v2", "1", "req-7")
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [
        ("input", "FP32", [2, 3, 4, 4]),
        ("image", "BYTES", [1]),
    ]
    assert request.inputs[0].parameters["binary_data_size"].int64_param == IMAGE.nbytes
    assert not request.inputs[0].HasField("contents")
    assert len(request.raw_input_contents) == 2
    decoded = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(
        request.inputs[0].shape
    )
    np.testing.assert_array_equal(decoded, IMAGE)
    assert request.raw_input_contents[1] == bytes_tensor([JPEG])

    (output,) = request.outputs
    assert output.name == "logits"
    classification = output.parameters["classification"]
    assert classification.WhichOneof("parameter_choice") == "int64_param"
    assert classification.int64_param == 5
    assert request.parameters["priority"].WhichOneof("parameter_choice") == "uint64_param"
    assert request.parameters["priority"].uint64_param == 3
    assert request.parameters["note"].string_param == "hello"
    assert request.parameters["scale"].double_param == 0.5
    # Nothing tritonclient wrote is unknown to us: the two readings are the same.
    assert json_format.MessageToDict(request, preserving_proto_field_name=True) == out["dict"]


RESPONSE_IN_TRITONCLIENT = """
    import base64, json, sys
    from google.protobuf import json_format
    import tritonclient.grpc as tc
    from tritonclient.grpc import service_pb2

    response = service_pb2.ModelInferResponse.FromString(sys.stdin.buffer.read())
    result = tc.InferResult(response)
    print(json.dumps({
        "dict": json_format.MessageToDict(response, preserving_proto_field_name=True),
        "classes": [[s.decode() for s in row] for row in result.as_numpy("logits")],
        "probs": result.as_numpy("probs").tolist(),
        "probs_dtype": str(result.as_numpy("probs").dtype),
    }))
"""


def test_infer_response_built_by_us_reads_in_tritonclient() -> None:
    classes = [["0.91:281:tabby", "0.05:282:tiger cat"], ["0.77:1:goldfish", "0.20:2:shark"]]
    probs = np.array([[0.25, 0.5, 0.25], [0.125, 0.125, 0.75]], dtype=np.float32)
    response = pb.ModelInferResponse(model_name="mobilenet_v2", model_version="1", id="req-7")
    response.outputs.add(name="logits", datatype="BYTES", shape=[2, 2])
    response.outputs.add(name="probs", datatype="FP32", shape=[2, 3])
    response.raw_output_contents.append(bytes_tensor([s.encode() for row in classes for s in row]))
    response.raw_output_contents.append(probs.astype("<f4").tobytes())
    response.parameters["batch_size"].int64_param = 2

    out = run_with_tritonclient(RESPONSE_IN_TRITONCLIENT, response.SerializeToString())

    assert out["classes"] == classes
    assert out["probs"] == probs.tolist()
    assert out["probs_dtype"] == "float32"
    assert out["dict"]["outputs"][0] == {"name": "logits", "datatype": "BYTES", "shape": ["2", "2"]}
    assert out["dict"]["parameters"] == {"batch_size": {"int64_param": "2"}}
    assert out["dict"] == json_format.MessageToDict(response, preserving_proto_field_name=True)


CONFIG_IN_TRITONCLIENT = """
    import json, sys
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2, service_pb2

    response = service_pb2.ModelConfigResponse.FromString(sys.stdin.buffer.read())
    config = response.config
    print(json.dumps({
        "dict": json_format.MessageToDict(response, preserving_proto_field_name=True),
        "scheduling": config.WhichOneof("scheduling_choice"),
        "input_type": model_config_pb2.DataType.Name(config.input[0].data_type),
        "format": model_config_pb2.ModelInput.Format.Name(config.input[0].format),
        "kind": model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind),
        "mean": config.parameters["preprocess.mean"].string_value,
    }))
"""


def test_model_config_response_built_by_us_reads_in_tritonclient() -> None:
    config = mc.ModelConfig(
        name="mobilenet_v2",
        platform="onnxruntime_onnx",
        backend="onnxruntime",
        max_batch_size=8,
        default_model_filename="model.onnx",
        runtime="libtriton_onnxruntime.so",
    )
    config.version_policy.latest.num_versions = 1
    config.input.add(
        name="input", data_type=mc.TYPE_FP32, format=mc.ModelInput.FORMAT_NCHW, dims=[3, -1, -1]
    )
    config.output.add(
        name="logits", data_type=mc.TYPE_FP32, dims=[1000], label_filename="labels.txt"
    )
    config.instance_group.add(name="cpu", count=2, kind=mc.ModelInstanceGroup.KIND_CPU)
    config.dynamic_batching.preferred_batch_size.extend([4, 8])
    config.dynamic_batching.max_queue_delay_microseconds = 2000
    config.dynamic_batching.default_queue_policy.max_queue_size = 64
    accelerator = config.optimization.execution_accelerators.cpu_execution_accelerator.add()
    accelerator.name = "openvino"
    accelerator.parameters["precision"] = "FP32"
    config.parameters["preprocess.mean"].string_value = "0.485,0.456,0.406"
    config.metric_tags["family"] = "MobileNet"
    response = pb.ModelConfigResponse(config=config)

    out = run_with_tritonclient(CONFIG_IN_TRITONCLIENT, response.SerializeToString())

    assert out["scheduling"] == "dynamic_batching"
    assert (out["input_type"], out["format"], out["kind"]) == (
        "TYPE_FP32",
        "FORMAT_NCHW",
        "KIND_CPU",
    )
    assert out["mean"] == "0.485,0.456,0.406"
    assert out["dict"]["config"]["input"][0]["dims"] == ["3", "-1", "-1"]
    assert out["dict"]["config"]["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    # Every field we set was read back by Triton's ModelConfig under the same meaning,
    # except `runtime`, which tritonclient 2.41 predates and skips as an unknown field.
    ours = json_format.MessageToDict(response, preserving_proto_field_name=True)
    assert ours["config"].pop("runtime") == "libtriton_onnxruntime.so"
    assert out["dict"] == ours


ROUND_TRIP_OVER_GRPC = """
    import base64, json, sys
    from concurrent import futures
    import grpc
    import numpy as np
    import tritonclient.grpc as tc

    canned_response = sys.stdin.buffer.read()
    seen = {}

    def model_infer(request_bytes, context):
        seen["request"] = request_bytes
        return canned_response

    # No (de)serializers: the handler sees and returns raw bytes.
    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = tc.InferenceServerClient(f"127.0.0.1:{port}")
        image = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4) / 7.0
        infer_input = tc.InferInput("input", list(image.shape), "FP32")
        infer_input.set_data_from_numpy(image)
        result = client.infer(
            "mobilenet_v2",
            [infer_input],
            model_version="1",
            outputs=[tc.InferRequestedOutput("logits", class_count=2)],
            request_id="req-9",
            priority=4,
            timeout=5000,
            client_timeout=30,
        )
        classes = [[s.decode() for s in row] for row in result.as_numpy("logits")]
        client.close()
    finally:
        server.stop(None)
    print(json.dumps({
        "request": base64.b64encode(seen["request"]).decode(),
        "classes": classes,
        "id": result.get_response().id,
    }))
"""


def test_tritonclient_infer_over_grpc_with_our_messages_on_the_server_side() -> None:
    """tritonclient's public API end to end: its request parsed by ours, our response decoded."""
    classes = [["0.91:281:tabby", "0.05:282:tiger cat"], ["0.77:1:goldfish", "0.20:2:shark"]]
    response = pb.ModelInferResponse(model_name="mobilenet_v2", model_version="1", id="req-9")
    response.outputs.add(name="logits", datatype="BYTES", shape=[2, 2])
    response.raw_output_contents.append(bytes_tensor([s.encode() for row in classes for s in row]))

    out = run_with_tritonclient(ROUND_TRIP_OVER_GRPC, response.SerializeToString())

    assert out["classes"] == classes
    assert out["id"] == "req-9"
    request = pb.ModelInferRequest.FromString(unb64(out["request"]))
    assert (request.model_name, request.model_version, request.id) == ("mobilenet_v2", "1", "req-9")
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [
        ("input", "FP32", [2, 3, 4, 4])
    ]
    decoded = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(2, 3, 4, 4)
    np.testing.assert_array_equal(decoded, IMAGE)
    assert request.outputs[0].name == "logits"
    assert request.outputs[0].parameters["classification"].int64_param == 2
    assert request.parameters["priority"].uint64_param == 4
    assert request.parameters["timeout"].int64_param == 5000
