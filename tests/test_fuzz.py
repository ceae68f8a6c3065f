"""Thousands of generated malformed requests against a real server (hypothesis).

Each case starts from a valid request and breaks one or two things about it;
the server must answer with one of the codes that the broken part allows and a
message naming it, never INTERNAL/UNKNOWN, while a stream of valid requests
keeps succeeding. The module prints how many cases it tried. Cases are
derandomized (the same every run); FUZZ_EXAMPLES=N per test digs deeper.
"""

from __future__ import annotations

import io
import os
import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from imaging.decode import DEFAULT_LIMITS, ImageLimitError, check_size
from imaging.preprocess import decode
from modelrepo.spec import Preprocess
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.serving import ServerProcess, digits, start_server, tensor_request
from tests.stress import (
    ValidStream,
    bmp_bomb,
    encoded,
    flip,
    image_request,
    peak_rss_mib,
    png_bomb,
    report,
    reset_peak_rss,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "700"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
TRIED: Counter[str] = Counter()
CLASSES = {"lenet5": 10, "mobilenet_v2": 1000}
MAGIC = (b"\xff\xd8", b"\x89PNG", b"RIFF", b"BM", b"GIF8")
NEVER = {"INTERNAL", "UNKNOWN", "UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED"}


PNG, JPEG = encoded("PNG"), encoded("JPEG")


@pytest.fixture(scope="module")
def server(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory, request):
    srv = start_server(serve_repo, "--max-message-mb", "4", log_dir=tmp_path_factory.mktemp("fuzz"))
    yield srv
    parts = ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items()))
    report(request.config, f"\nfuzz: {sum(TRIED.values())} malformed requests tried ({parts})")
    assert srv.terminate() == 0, srv.output()[-3000:]
    assert "Traceback" not in srv.output(), srv.output()[-3000:]


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> grpc.Channel:
    return grpc.insecure_channel(server.url)


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture
def stream(server: ServerProcess):
    """Valid tensors and encoded images, all the while a test runs; all must succeed."""
    valid = [tensor_request("lenet5", digits(2)), image_request([PNG, JPEG])]
    with ValidStream(server, valid) as s:
        yield s
    assert s.outcomes["OK"] > 0 and set(s.outcomes) == {"OK"}, (s.outcomes, s.messages[:5])


def outcome(call: Callable[[], object]) -> tuple[str, str]:
    try:
        call()
        return "OK", ""
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or ""


# --- mutations of a valid tensor request ------------------------------------
ints = st.one_of(
    st.integers(-3, 40), st.sampled_from([0, -1, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63)])
)
texts = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda unit, n: unit * n,
        st.sampled_from(["a", "../", "é", "\x00"]),
        st.integers(2000, 20000),
    ),
    st.sampled_from(["../lenet5", "lenet5/../x", "/etc/passwd", "..", ".", "a\\b", "lenet5\n"]),
)
DATATYPES = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP64", "BF16", "BYTES", ""]


def _bad_k(classes: int) -> st.SearchStrategy[tuple[str, object]]:
    def bad_text(t: str) -> bool:
        return not (re.fullmatch(r"\s*[+-]?[0-9]{1,18}\s*", t) and 1 <= int(t) <= classes)

    return st.one_of(
        st.tuples(st.just("int64_param"), st.integers(-(2**63), 0)),
        st.tuples(st.just("int64_param"), st.integers(classes + 1, 2**63 - 1)),
        st.tuples(st.just("uint64_param"), st.integers(classes + 1, 2**64 - 1)),
        st.tuples(st.just("double_param"), st.floats(allow_nan=True)),
        st.tuples(st.just("bool_param"), st.booleans()),
        st.tuples(
            st.just("string_param"),
            st.one_of(texts, st.sampled_from(["²", "٣", "3.0", " 0", "-5", "1e3", "0x10"])).filter(
                bad_text
            ),
        ),
    )


def _set_shape(r: pb.ModelInferRequest, shape: list[int]) -> None:
    r.inputs[0].ClearField("shape")
    r.inputs[0].shape.extend(shape)


def _resize_raw(r: pb.ModelInferRequest, delta: int) -> None:
    raw = r.raw_input_contents[0]
    r.raw_input_contents[0] = raw[:delta] if delta < 0 else raw + bytes(delta)


def _raw_count(r: pb.ModelInferRequest, n: int) -> None:
    raw = r.raw_input_contents[0]
    r.ClearField("raw_input_contents")
    r.raw_input_contents.extend([raw] * n)


def _input_count(r: pb.ModelInferRequest, n: int) -> None:
    first = pb.ModelInferRequest.InferInputTensor()
    first.CopyFrom(r.inputs[0])
    r.ClearField("inputs")
    for i in range(n):
        added = r.inputs.add()
        added.CopyFrom(first)
        added.name = "input" if i < 2 else "other"


def _classification(r: pb.ModelInferRequest, value: tuple[str, object]) -> None:
    setattr(r.outputs.add(name="logits").parameters["classification"], *value)


# kind: (parameter strategy, apply, codes allowed, words of which the message names one)
MUTATIONS: dict[str, tuple[st.SearchStrategy, Callable, set[str], tuple[str, ...]]] = {
    "model": (
        texts.filter(lambda t: t not in CLASSES),
        lambda r, v: setattr(r, "model_name", v),
        {"NOT_FOUND", "INVALID_ARGUMENT"},
        ("model",),
    ),
    "version": (
        texts.filter(lambda v: v != "" and not re.fullmatch("0*1", v)),
        lambda r, v: setattr(r, "model_version", v),
        {"NOT_FOUND"},
        ("version",),
    ),
    "datatype": (
        st.one_of(texts, st.sampled_from(DATATYPES)).filter(lambda d: d != "FP32"),
        lambda r, v: setattr(r.inputs[0], "datatype", v),
        {"INVALID_ARGUMENT"},
        ("datatype", "BYTES", "element"),
    ),
    "shape": (st.lists(ints, max_size=6), _set_shape, {"INVALID_ARGUMENT"}, ("shape", "batch")),
    "raw_length": (
        st.integers(-64, 4096).filter(bool),
        _resize_raw,
        {"INVALID_ARGUMENT"},
        ("raw content",),
    ),
    "raw_count": (st.sampled_from([0, 2, 3]), _raw_count, {"INVALID_ARGUMENT"}, ("contents",)),
    "input_name": (
        texts.filter(lambda t: t != "input"),
        lambda r, v: setattr(r.inputs[0], "name", v),
        {"INVALID_ARGUMENT"},
        ("unknown input",),
    ),
    "input_count": (
        st.sampled_from([0, 2, 3]),
        _input_count,
        {"INVALID_ARGUMENT"},
        ("exactly one input",),
    ),
    "both_sources": (
        st.integers(1, 64),
        lambda r, n: r.inputs[0].contents.fp32_contents.extend([0.5] * n),
        {"INVALID_ARGUMENT"},
        ("contents",),
    ),
    "output_name": (
        texts.filter(lambda t: t != "logits"),
        lambda r, v: r.outputs.add(name=v),
        {"INVALID_ARGUMENT"},
        ("output",),
    ),
}
BAD_K = {model: _bad_k(classes) for model, classes in CLASSES.items()}


def _still_valid(model: str, new: list[int], old: list[int]) -> bool:
    """A mutated shape that still describes a valid request for the same bytes."""
    dynamic = model == "mobilenet_v2" and len(new) == 4 and new[1] == 3 and min(new) > 0
    return new == old or (dynamic and new[0] <= 16 and np.prod(new) == np.prod(old))


@st.composite
def broken_request(draw: st.DrawFn):
    model = draw(st.sampled_from(sorted(CLASSES)))
    if model == "lenet5":
        x = digits(draw(st.integers(1, 3)))
    else:
        side = draw(st.integers(4, 24))
        x = np.zeros((1, 3, side, side + 1), np.float32)
    req = tensor_request(model, x)
    codes: set[str] = set()
    words: tuple[str, ...] = ()
    for kind in draw(st.lists(st.sampled_from([*MUTATIONS, "k"]), min_size=1, max_size=2)):
        if kind == "k":
            strategy, apply, allowed, named = (
                BAD_K[model],
                _classification,
                {"INVALID_ARGUMENT"},
                ("classification",),
            )
        else:
            strategy, apply, allowed, named = MUTATIONS[kind]
        value = draw(strategy)
        assume(not (kind == "shape" and _still_valid(model, value, list(x.shape))))
        try:
            apply(req, value)
        except IndexError:  # an earlier mutation removed what this one changes
            continue
        codes |= allowed
        words += named
    return req, codes, words


@FUZZ
@given(case=broken_request())
def test_malformed_tensor_requests(stub, stream: ValidStream, case) -> None:
    req, codes, words = case
    code, message = outcome(lambda: stub.ModelInfer(req, timeout=30))
    TRIED["tensor"] += 1
    assert code in codes, (code, message, codes)
    assert any(w in message for w in words), (message, words)


# --- encoded images ---------------------------------------------------------
@st.composite
def image_element(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(bytes, certainly undecodable)."""
    base = draw(st.sampled_from([PNG, JPEG]))
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "empty", "bomb", "valid"]))
    if kind == "random":
        data = draw(st.binary(max_size=2000))
        return data, not data.startswith(MAGIC)
    if kind == "truncated":
        return base[: draw(st.integers(0, len(base) // 2))], True
    if kind == "flipped":
        return flip(base, draw(st.lists(st.integers(0, 10**6), min_size=1, max_size=8))), False
    if kind == "bomb":
        side = st.integers(7072, 2**31 - 1)
        return png_bomb(draw(side), draw(side)), True
    return (b"", True) if kind == "empty" else (base, False)


@FUZZ
@given(
    elements=st.lists(image_element(), min_size=1, max_size=4),
    raw=st.booleans(),
    shape_kind=st.sampled_from(["n", "n1", "wrong"]),
)
def test_malformed_images(stub, stream: ValidStream, elements, raw, shape_kind) -> None:
    data = [e for e, _ in elements]
    n = len(data)
    shape = {"n": [n], "n1": [n, 1], "wrong": [n + 1]}[shape_kind]
    req = image_request(data, shape, raw)
    code, message = outcome(lambda: stub.ModelInfer(req, timeout=60))
    TRIED["image"] += 1
    if shape_kind == "wrong" or any(bad for _, bad in elements):
        assert code == "INVALID_ARGUMENT", (code, message)
    assert code in {"OK", "INVALID_ARGUMENT"}, (code, message)
    if code != "OK":
        assert re.search(r"element \d+|BYTES|elements", message), message


@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=3000),
        st.tuples(
            st.sampled_from(["tensor", "image"]), st.lists(st.integers(0, 10**6), max_size=6)
        ),
    )
)
def test_bytes_that_are_not_a_request(channel, stream: ValidStream, body) -> None:
    """The wire format itself broken: random bodies and bit-flipped valid requests."""
    if isinstance(body, tuple):
        kind, flips = body
        valid = tensor_request("lenet5", digits(1)) if kind == "tensor" else image_request([PNG])
        body = flip(valid.SerializeToString(), flips) if flips else valid.SerializeToString()
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    code, message = outcome(lambda: call(body, timeout=30))
    TRIED["wire"] += 1
    assert code not in NEVER, (code, message)


# --- fixed cases ---------------------------------------------------------------
def test_oversize_message_is_refused_cleanly(server: ServerProcess, stub, stream) -> None:
    """--max-message-mb 4 here: gRPC refuses a 6 MiB body before our code reads it."""
    big = tensor_request("mobilenet_v2", np.zeros((1, 3, 724, 724), np.float32))
    code, message = outcome(lambda: stub.ModelInfer(big, timeout=30))
    assert code == "RESOURCE_EXHAUSTED" and "larger than max" in message, (code, message)
    assert "(6290" in message and "4194304)" in message, message  # both sizes are named


def test_decompression_bombs_are_refused_without_a_memory_spike(server, stub, stream) -> None:
    bombs = [
        png_bomb(7100, 7100, pixels=True),  # 49 kB inflating to 50 Mpx: 150 MB as RGB
        png_bomb(20_000, 20_000),  # 400 Mpx declared: Pillow's own limit
        png_bomb(2**31 - 1, 1),
    ]
    reset_peak_rss(server.proc.pid)
    peak = peak_rss_mib(server.proc.pid)
    for bomb in bombs:
        code, message = outcome(lambda b=bomb: stub.ModelInfer(image_request([PNG, b])))
        assert code == "INVALID_ARGUMENT", (code, message)
        assert "element 1" in message and "50,000,000 pixels" in message, message
    assert peak_rss_mib(server.proc.pid) - peak < 64  # decoding the first takes ~240 MB


BOMB_SIDES = (1, 2, 7, 224, 4_000, 20_000, 65_000, 50_000_000)
BOMB_CLASSES: dict[str, Callable[[int, int], bytes | None]] = {
    "png header": png_bomb,
    "bmp header": bmp_bomb,
    "png pixels": lambda w, h: png_bomb(w, h, pixels=True) if w * h <= 4_000_000 else None,
    "jpeg pixels": lambda w, h: (
        encoded("JPEG", (w, h), quality=50) if max(w, h) <= 65_000 and w * h <= 4_000_000 else None
    ),
}


def _expected_refusal(width: int, height: int) -> str:
    """The flag a default server names for this size, or "" when the size is allowed."""
    try:
        check_size(width, height, Preprocess(), DEFAULT_LIMITS)
    except ImageLimitError as exc:
        return re.search(r"--[a-z-]+", str(exc)).group(0)
    return ""


@pytest.mark.parametrize("kind", BOMB_CLASSES)
def test_image_bombs_of_many_shapes(server, stub, stream, kind: str, request) -> None:
    """Every width x height from 1 to 50 million per side: refused from the header
    naming the limit when over one (four requests at once, 3 s deadline, answered
    well inside it), decoded otherwise; peak RSS growth per class under 600 MB."""
    cases = [
        (w, h, data)
        for w in BOMB_SIDES
        for h in BOMB_SIDES
        if (data := BOMB_CLASSES[kind](w, h)) is not None
    ]
    reset_peak_rss(server.proc.pid)
    base = peak_rss_mib(server.proc.pid)
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda c: outcome(lambda: stub.ModelInfer(image_request([c[2]]), timeout=3)), cases
            )
        )
    growth = peak_rss_mib(server.proc.pid) - base
    report(request.config, f"image bombs, {kind}: {len(cases)} shapes, peak RSS +{growth:.0f} MB")
    TRIED["bomb"] += len(cases)
    for (w, h, _), (code, message) in zip(cases, answers, strict=True):
        flag = _expected_refusal(w, h)
        if flag:
            assert code == "INVALID_ARGUMENT" and flag in message, (w, h, code, message)
        elif "header" in kind:  # no pixel data: tiny sizes still decode (as zeros)
            assert code == "OK" or "cannot decode" in message, (w, h, code, message)
        else:
            assert code == "OK", (w, h, code, message)
    assert growth < 600, f"peak RSS grew {growth:.0f} MB"


def _logits(stub, elements: list[bytes]) -> np.ndarray:
    resp = stub.ModelInfer(image_request(elements), timeout=60)
    return np.frombuffer(resp.raw_output_contents[0], "<f4").reshape(len(elements), -1)


def test_image_modes_and_exif_rotation_through_the_server(stub) -> None:
    """Every mode of the same grey picture gives the same row as its RGB PNG; an
    EXIF-rotated JPEG gives the row of the upright picture."""
    grey = np.add.outer(np.arange(48), 2 * np.arange(64)).astype(np.uint8)
    palette = Image.fromarray(grey, "P")
    palette.putpalette([v for i in range(256) for v in (i, i, i)])
    alpha = np.random.default_rng(0).integers(0, 256, grey.shape, dtype=np.uint8)
    variants = [
        Image.fromarray(np.stack([grey] * 3, -1)),  # the reference, RGB
        Image.fromarray(grey),  # L
        Image.fromarray(np.stack([grey, alpha], -1), "LA"),
        Image.fromarray(np.stack([grey, grey, grey, alpha], -1), "RGBA"),  # alpha ignored
        Image.fromarray(grey.astype(np.uint16) * 257),  # 16-bit greyscale
        palette,
    ]
    rows = _logits(stub, [_png(v) for v in variants])
    for mode, row in zip(["L", "LA", "RGBA", "I;16", "P"], rows[1:], strict=True):
        np.testing.assert_array_equal(row, rows[0], err_msg=mode)

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    tagged = encoded("JPEG", (64, 40), exif=exif.tobytes())
    upright = Image.open(io.BytesIO(tagged)).convert("RGB").transpose(Image.Transpose.ROTATE_270)
    plain = Image.open(io.BytesIO(tagged)).convert("RGB")
    rotated, reference, unrotated = _logits(stub, [tagged, _png(upright), _png(plain)])
    np.testing.assert_array_equal(rotated, reference)
    assert not np.array_equal(rotated, unrotated)


def test_cmyk_jpeg_keeps_its_colours() -> None:
    """Decoded (in process, as the server does) close to the RGB it was made from."""
    rgb = np.asarray(Image.open(io.BytesIO(encoded("PNG", (64, 48)))).convert("RGB"))
    cmyk = encoded("JPEG", (64, 48), mode="CMYK", quality=95)
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK"
    decoded = np.asarray(decode(cmyk), dtype=np.int16)
    assert np.abs(decoded - rgb).mean() < 4  # inverted colours would be ~100 apart


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
