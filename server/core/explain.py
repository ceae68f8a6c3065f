"""What the model looked at, on a ModelInfer: occlusion sensitivity (Zeiler & Fergus, 2014)
for every model, class activation maps (server/core/cam.py) where the export holds their data.

A client asks with request parameters (tritonclient sends them as ``parameters=``):

    explain         "occlusion" or "cam"
    explain_patch   occlusion: side of the grey square, input pixels (default: 1/7 of the side)
    explain_stride  occlusion: step between squares (default: half the patch)
    explain_class   the class to explain (default: each image's top class)

and gets, beside the usual outputs, ``explanation``: FP32 [N, H, W] at the input's
resolution. Occlusion: each pixel the mean drop in the class probability over the
squares that covered it (positive: hiding it hurts the class); the occluded copies
go through the model's own batcher in chunks bounded by rows, bytes and pixels
(``chunk``), so they count against its queue bound and the client's share like any
image (a full queue fails the request RESOURCE_EXHAUSTED), and within the
explanation deadline (``deadline``): a cancelled or late request withdraws them.
CAM: the class's evidence at each pixel in logit units, from the same forward
pass as the logits.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from modelrepo.cam import CamHead
from server.core.cam import class_maps
from server.core.errors import InvalidArgument, shown
from server.core.messages import InferRequest, InferResponse, OutputTensor, Parameters
from server.core.tensors import parameter_kind, softmax
from server.settings.limits import RequestLimits

OUTPUT = "explanation"
METHODS = ("occlusion", "cam")
MAX_POSITIONS = 1024  # occluded copies per image: beyond this a request is a denial of service
_INTEGER = re.compile(r"\s*[0-9]{1,9}\s*")

RunBatch = Callable[[np.ndarray], Awaitable[np.ndarray]]


@dataclass(frozen=True)
class ExplainRequest:
    """What one request asks to be explained (its parameters), not a server setting."""

    method: str = "occlusion"
    patch: int = 0  # 0: default for the input size
    stride: int = 0
    target: int | None = None  # None: each image's top class


def _int_param(params: Parameters, key: str) -> int | None:
    if key not in params:
        return None
    value = params[key]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 31:
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    raise InvalidArgument(
        f"parameter {key} must be a non-negative integer, got {parameter_kind(value)} {value!r}"
    )


def parse(request: InferRequest) -> ExplainRequest | None:
    """The explanation asked for (None: none). Removes ``explanation`` from the requested
    outputs, which name only the model's own outputs afterwards."""
    names = [o.name for o in request.outputs]
    if OUTPUT in names:
        del request.outputs[names.index(OUTPUT)]
    params = request.parameters
    if "explain" not in params:
        if OUTPUT in names:
            raise InvalidArgument(f"output '{OUTPUT}' needs the request parameter explain")
        return None
    method = params["explain"] if isinstance(params["explain"], str) else ""
    if method not in METHODS:
        raise InvalidArgument(f"parameter explain {shown(method)}: choose from {list(METHODS)}")
    return ExplainRequest(
        method=method,
        patch=_int_param(params, "explain_patch") or 0,
        stride=_int_param(params, "explain_stride") or 0,
        target=_int_param(params, "explain_class"),
    )


def check_method(
    opts: ExplainRequest, model: str, has_cam: bool, ensemble: bool, classes: int = 0
) -> None:
    """Before queueing: CAM only where the model's export holds its data, and a named
    class within the model's ``classes`` (0: not known from the config)."""
    if opts.target is not None and classes > 0 and not 0 <= opts.target < classes:
        raise InvalidArgument(f"explain_class {opts.target} is not in 0..{classes - 1}")
    if opts.method != "cam" or has_cam:
        return
    why = (
        "an ensemble's members each have their own feature maps"
        if ensemble
        else "its config.pbtxt names no cam_features_output (its head is not global average "
        "pooling then one linear layer, it was exported with --no-cam or for TensorRT)"
    )
    raise InvalidArgument(
        f"model '{model}' has no class activation maps: {why}; explain methods it supports: "
        "['occlusion']"
    )


def check_size(shape: tuple[int, ...], max_bytes: int) -> None:
    """The map ([N, H, W] FP32) must fit the message limit the answer travels under."""
    if len(shape) != 4:
        return  # explain() names the layout it needs
    size = int(shape[0]) * int(shape[2]) * int(shape[3]) * 4
    if size > max_bytes:
        raise InvalidArgument(
            f"an explanation of input shape {list(shape)} is {size:,} bytes, over the "
            f"{max_bytes:,}-byte message limit"
        )


def deadline(limits: RequestLimits, client: float | None) -> float | None:
    """The client's deadline, or the server's default for explanations when sooner."""
    if not limits.explain_timeout:
        return client
    default = time.monotonic() + limits.explain_timeout
    return default if client is None else min(client, default)


def chunk(limits: RequestLimits, shape: tuple[int, ...], rows: int, max_bytes: int) -> int:
    """Occluded copies queued at once: bounded by rows, bytes and pixels, at least one.

    Rows alone let one [1, 3, 896, 896] request queue 32 copies at a time (300 MiB of
    copies and a batch of 896x896 activations: +2.5 GB); bytes bound the copies and
    pixels bound the activations they cause.
    """
    copy_bytes = max(1, int(np.prod(shape[1:])) * 4)
    pixels = max(1, int(shape[-2]) * int(shape[-1])) if len(shape) == 4 else 1
    byte_cap = min(limits.explain_chunk_mb << 20, max_bytes)
    return max(1, min(rows, byte_cap // copy_bytes, limits.explain_chunk_pixels // pixels))


def positions(size: int, patch: int, stride: int) -> list[int]:
    """Square offsets along one side; the last square ends at the edge."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] + patch < size:
        starts.append(size - patch)
    return starts


def _geometry(opts: ExplainRequest, height: int, width: int) -> tuple[int, list[int], list[int]]:
    patch = opts.patch or max(1, round(min(height, width) / 7))
    stride = opts.stride or max(1, patch // 2)
    if patch > min(height, width):
        raise InvalidArgument(f"explain_patch {patch} exceeds the input's {height}x{width}")
    ys, xs = positions(height, patch, stride), positions(width, patch, stride)
    if len(ys) * len(xs) > MAX_POSITIONS:
        raise InvalidArgument(
            f"explain_stride {stride} gives {len(ys) * len(xs)} occluded copies per image "
            f"(limit {MAX_POSITIONS}): use a larger stride or patch"
        )
    return patch, ys, xs


async def occlusion(
    run: RunBatch, images: np.ndarray, logits: np.ndarray, opts: ExplainRequest, chunk_rows: int
) -> np.ndarray:
    """[N, H, W] drop in class probability per pixel, the copies run through ``run``."""
    n, _, height, width = images.shape
    patch, ys, xs = _geometry(opts, height, width)
    base = softmax(np.asarray(logits, dtype=np.float64))
    heat = np.zeros((n, height, width), dtype=np.float32)
    for i in range(n):
        target = int(base[i].argmax()) if opts.target is None else opts.target
        boxes = [(y, x) for y in ys for x in xs]
        scores: list[np.ndarray] = []
        for start in range(0, len(boxes), chunk_rows):
            part = boxes[start : start + chunk_rows]
            copies = np.repeat(images[i : i + 1], len(part), axis=0)
            for k, (y, x) in enumerate(part):
                copies[k, :, y : y + patch, x : x + patch] = 0.0  # the mean: grey
            scores.append(softmax(np.asarray(await run(copies), dtype=np.float64)))
        drops = base[i, target] - np.concatenate(scores)[:, target]
        total = np.zeros((height, width))
        count = np.zeros((height, width))
        for (y, x), drop in zip(boxes, drops, strict=True):
            total[y : y + patch, x : x + patch] += drop
            count[y : y + patch, x : x + patch] += 1
        heat[i] = total / np.maximum(count, 1)
    return heat


async def explain(
    opts: ExplainRequest,
    run: RunBatch,
    images: np.ndarray,
    logits: np.ndarray,
    chunk_rows: int,
    cam: tuple[CamHead, np.ndarray] | None = None,
) -> np.ndarray:
    """The map asked for; ``cam``: the head and the feature map of this forward pass."""
    if images.ndim != 4:
        raise InvalidArgument(f"explanations need NCHW images, got shape {list(images.shape)}")
    classes = logits.shape[1]
    if opts.target is not None and not 0 <= opts.target < classes:
        raise InvalidArgument(f"explain_class {opts.target} is not in 0..{classes - 1}")
    if opts.method == "cam":
        if cam is None:  # check_method refuses such requests before they are queued
            raise InvalidArgument("class activation maps need the model's feature map")
        head, features = cam
        top = [int(t) for t in logits.argmax(1)]
        targets = top if opts.target is None else [opts.target] * len(images)
        return class_maps(head, features, targets, images.shape[2], images.shape[3])
    return await occlusion(run, images, logits, opts, chunk_rows)


def attach(response: InferResponse, heat: np.ndarray) -> None:
    """``explanation`` after the model's outputs, with each image's peak as ``y,x``."""
    peaks = [np.unravel_index(int(h.argmax()), h.shape) for h in heat]
    peak = ";".join(f"{y},{x}" for y, x in peaks)
    heat = np.asarray(heat, dtype=np.float32)
    response.outputs.append(
        OutputTensor(OUTPUT, "FP32", list(heat.shape), heat, {"explain_peak": peak})
    )
