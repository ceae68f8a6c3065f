"""The image path on a real server: limits from the header, admission against the
queue bound and the in-flight caps, deadlines that stop decoding, UINT8 pixels.

The slow image is a 7000x7000 PNG of 48 kB (zeros) that costs a second or more of
CPU to decode: slow enough that the tests can watch what the server does while it
decodes, measured per image in the same run rather than assumed.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from protos import grpc_service_pb2 as pb
from tests.kit.serving import ServerProcess, logits_of, start_server
from tests.kit.stress import ValidStream, encoded, image_request, png_bomb, wait_for

B, Q, IN_FLIGHT = 8, 9, 6  # max batch, queue bound, images in flight per model
SLOW = png_bomb(7000, 7000, pixels=True)
SMALL = encoded("PNG", (64, 48))


@pytest.fixture(scope="module")
def server(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    srv = start_server(
        serve_repo,
        *("--model", "mobilenet_v2", "--max-batch-size", str(B), "--max-queue-size", str(Q)),
        *("--max-images-in-flight", str(IN_FLIGHT), "--max-image-mb-in-flight", "1"),
        *("--decode-threads", "1", "--max-image-aspect", "100"),
        log_dir=tmp_path_factory.mktemp("images"),
    )
    yield srv
    assert srv.terminate() == 0, srv.output()[-3000:]
    assert "Traceback" not in srv.output(), srv.output()[-3000:]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, clock ticks of 10 ms


def _idle(pid: int) -> float:
    """Wait until the server stops using CPU (< 0.1 s per second); its CPU total then."""
    last = [_cpu_seconds(pid)]

    def settled() -> bool:
        threading.Event().wait(1.0)
        now = _cpu_seconds(pid)
        quiet, last[0] = now - last[0] < 0.1, now
        return quiet

    assert wait_for(settled, timeout=120, step=0)
    return last[0]


def _call(srv: ServerProcess, req: pb.ModelInferRequest, timeout: float = 60) -> tuple[str, str]:
    try:
        srv.stub().ModelInfer(req, timeout=timeout)
        return "OK", ""
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or ""


def test_size_limits_are_read_from_the_header(server: ServerProcess) -> None:
    """Aspect-ratio bombs and resized-size bombs are refused before decoding, by name."""
    cases = {
        png_bomb(20_000, 2): "--max-image-aspect",  # 126 bytes; 2.3 Gpx after the resize
        png_bomb(50_000_000, 1): "--max-image-aspect",  # was INTERNAL: OverflowError
        png_bomb(1, 50_000_000): "--max-image-aspect",
        png_bomb(20_000, 200): "--max-resized-pixels",  # aspect 100 allowed here; 25600x256
        png_bomb(60_000, 3_000): "--max-image-pixels",
    }
    with ValidStream(server, [image_request([SMALL])]) as stream:
        for bomb, flag in cases.items():
            code, message = _call(server, image_request([SMALL, bomb]))
            assert code == "INVALID_ARGUMENT" and "element 1" in message, (code, message)
            assert flag in message, message
    assert set(stream.outcomes) == {"OK"}, stream.messages[:3]


def test_in_flight_caps_refuse_by_name(server: ServerProcess) -> None:
    code, message = _call(server, image_request([SMALL] * (IN_FLIGHT + 1)))
    assert code == "RESOURCE_EXHAUSTED" and "--max-images-in-flight" in message, message
    big = encoded("BMP", (700, 600))  # 1.2 MB of pixels, over --max-image-mb-in-flight 1
    code, message = _call(server, image_request([big]))
    assert code == "RESOURCE_EXHAUSTED" and "--max-image-mb-in-flight" in message, message


def test_decoding_counts_against_the_queue_bound(server: ServerProcess) -> None:
    """While six slow images decode, six more exceed the queue bound of nine."""
    pid = server.proc.pid
    base = _idle(pid)
    first = server.stub().ModelInfer.future(image_request([SLOW] * IN_FLIGHT), timeout=120)
    assert wait_for(lambda: _cpu_seconds(pid) - base > 0.3)  # admitted: it is decoding
    refused = ""
    while not first.done() and not refused:
        code, message = _call(server, image_request([SMALL] * IN_FLIGHT))
        refused = message if code == "RESOURCE_EXHAUSTED" else ""
    first.result()  # the slow request itself succeeds
    assert "--max-queue-size" in refused and "decoding" in refused, refused


def test_deadline_and_cancel_stop_decoding(server: ServerProcess) -> None:
    """Six slow images with a short deadline, then six cancelled by the client while
    the first decodes: the images not yet started are never decoded (one decode thread).

    Decoding them all would cost 5 more images' CPU; the bound allows 2 more (3x one), the
    margin a host busy with other work needs (CPU time per image drifts with contention)."""
    pid = server.proc.pid
    before = _idle(pid)
    assert _call(server, image_request([SLOW]))[0] == "OK"
    one = _idle(pid) - before  # the CPU of one slow image, this run
    code, message = _call(server, image_request([SLOW] * IN_FLIGHT), timeout=0.25)
    assert code == "DEADLINE_EXCEEDED", (code, message)
    after_deadline = _idle(pid)
    spent = after_deadline - before - one
    assert spent < 3 * one, f"{spent:.2f} s of CPU after the deadline; one image {one:.2f} s"

    call = server.stub().ModelInfer.future(image_request([SLOW] * IN_FLIGHT), timeout=120)
    assert wait_for(lambda: _cpu_seconds(pid) - after_deadline > 0.2 * one)  # decoding began
    call.cancel()
    spent = _idle(pid) - after_deadline
    assert spent < 3 * one, f"{spent:.2f} s of CPU after the cancel; one image {one:.2f} s"
    assert _call(server, image_request([SMALL]))[0] == "OK"


def _uint8_request(pixels: np.ndarray) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="mobilenet_v2")
    req.inputs.add(name="input", datatype="UINT8", shape=list(pixels.shape))
    req.raw_input_contents.append(np.ascontiguousarray(pixels, np.uint8).tobytes())
    return req


def test_uint8_pixels_answer_like_the_same_png(server: ServerProcess, photos) -> None:
    rgb = np.asarray(Image.open(photos["chelsea.png"]).convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    stub = server.stub()
    as_png = logits_of(stub.ModelInfer(image_request([buf.getvalue()]), timeout=60))
    as_pixels = logits_of(stub.ModelInfer(_uint8_request(rgb[None]), timeout=60))
    np.testing.assert_array_equal(as_pixels, as_png)

    too_small = _call(server, _uint8_request(np.zeros((1, 100, 300, 3), np.uint8)))
    assert too_small[0] == "INVALID_ARGUMENT" and "H, W >= 224" in too_small[1], too_small
    wrong = _call(server, _uint8_request(np.zeros((1, 224, 224, 4), np.uint8)))
    assert wrong[0] == "INVALID_ARGUMENT" and "[N, H, W, 3]" in wrong[1], wrong


def test_model_config_describes_every_input_form(server: ServerProcess) -> None:
    config = server.stub().ModelConfig(pb.ModelConfigRequest(name="mobilenet_v2")).config
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["input.datatypes"] == "FP32,BYTES,UINT8"
    assert "NHWC RGB pixels, H and W >= 224" in params["input.UINT8"]
    assert "encoded JPEG" in params["input.BYTES"]
