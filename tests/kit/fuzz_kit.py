"""Shared pieces of the fuzz tests: hypothesis settings, the generated malformed
requests (tensor mutations, broken images), and the valid stream that must keep
succeeding meanwhile.

Used by test_fuzz.py and test_image_decoding.py (gRPC), test_fuzz_http.py (the
same cases over REST), test_fuzz_shm.py and test_cluster.py.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st

from protos import grpc_service_pb2 as pb
from tests.kit.serving import ServerProcess, digits, start_server, tensor_request
from tests.kit.stress import ValidStream, encoded, flip, image_request, png_bomb, report

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "700"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
CLASSES = {"lenet5": 10, "mobilenet_v2": 1000}
MAGIC = (b"\xff\xd8", b"\x89PNG", b"RIFF", b"BM", b"GIF8")
NEVER = {"INTERNAL", "UNKNOWN", "UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED"}


PNG, JPEG = encoded("PNG"), encoded("JPEG")


def module_server(tried: Counter[str]) -> Callable[..., Iterator[ServerProcess]]:
    """A test module's ``server`` fixture: one server with 4 MiB messages for the module;
    at its end, the cases counted in ``tried`` are reported and the server must exit
    cleanly with no traceback in its log."""

    @pytest.fixture(scope="module")
    def server(
        serve_repo: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
    ) -> Iterator[ServerProcess]:
        log_dir = tmp_path_factory.mktemp("fuzz")
        srv = start_server(serve_repo, "--max-message-mb", "4", log_dir=log_dir)
        yield srv
        parts = ", ".join(f"{k} {v}" for k, v in sorted(tried.items()))
        report(request.config, f"\nfuzz: {sum(tried.values())} malformed requests tried ({parts})")
        assert srv.terminate() == 0, srv.output()[-3000:]
        assert "Traceback" not in srv.output(), srv.output()[-3000:]

    return server


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
