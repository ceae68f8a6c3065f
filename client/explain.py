"""``python -m client explain``: ask the server what a model looked at, and draw it.

The request is an ordinary ModelInfer with the ``explain`` parameters (see
server/core/explain.py): occlusion sensitivity for any model, or a class activation map
("cam", one forward pass) where the model's export holds its data. The heat map
comes back at the model's input resolution, so it is laid over the same centre
crop the server made of the photo.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from client.client import ClientError, InferenceClient, split_bytes_elements
from imaging.decode import decode
from imaging.transform import resize_crop
from modelrepo.spec import preprocess_from
from protos import grpc_service_pb2 as pb

OUTPUT = "explanation"
METHODS = ("occlusion", "cam")


@dataclass(frozen=True)
class Explanation:
    heat: np.ndarray  # [H, W]: occlusion's probability drop, or CAM's class evidence
    top_class: int
    top_label: str
    crop: np.ndarray  # [H, W, 3] uint8: the part of the photo the model saw


def explain_image(
    client: InferenceClient,
    model: str,
    image: bytes,
    *,
    version: str = "",
    patch: int = 0,
    stride: int = 0,
    target: int | None = None,
    method: str = "occlusion",
) -> Explanation:
    """``patch`` and ``stride`` (0: the server's defaults) apply to occlusion only."""
    if method not in METHODS:
        raise ClientError(f"explain method {method!r}: choose from {list(METHODS)}")
    req = pb.ModelInferRequest(model_name=model, model_version=version)
    req.inputs.add(name="input", datatype="BYTES", shape=[1]).contents.bytes_contents.append(image)
    req.parameters["explain"].string_param = method
    for key, value in (("explain_patch", patch), ("explain_stride", stride)):
        if value:
            req.parameters[key].int64_param = value
    if target is not None:
        req.parameters["explain_class"].int64_param = target
    config = client.config(model, version)
    req.outputs.add(name=config.output[0].name).parameters["classification"].int64_param = 1
    req.outputs.add(name=OUTPUT)
    resp = client.infer_request(req)
    names = [o.name for o in resp.outputs]
    if names != [config.output[0].name, OUTPUT]:
        raise ClientError(f"the server at {client.url} sent outputs {names}, not '{OUTPUT}'")
    heat = np.frombuffer(resp.raw_output_contents[1], "<f4").reshape(list(resp.outputs[1].shape))
    _, index, label = split_bytes_elements(resp.raw_output_contents[0], 1)[0].decode().split(":", 2)
    pre = preprocess_from(config)
    crop = resize_crop(decode(image, pre), pre)  # the pixels the server's crop holds
    return Explanation(
        heat=heat[0],
        top_class=int(index),
        top_label=label,
        crop=np.repeat(crop, 3, axis=2) if crop.shape[2] == 1 else crop,
    )


def colourise(heat: np.ndarray) -> np.ndarray:
    """[H, W] -> [H, W, 3] uint8, blue (no effect) through green to red (the class needs it)."""
    peak = float(np.abs(heat).max()) or 1.0
    h = np.clip(heat / peak, 0.0, 1.0)
    rgb = np.stack([h, 1.0 - np.abs(2.0 * h - 1.0), 1.0 - h], axis=-1)
    return (rgb * 255).astype(np.uint8)


def overlay(explanation: Explanation, alpha: float = 0.5) -> bytes:
    """The crop with the heat map laid over it, as PNG bytes."""
    crop = explanation.crop
    if crop.shape[-1] == 1:
        crop = np.repeat(crop, 3, axis=-1)
    blended = (1 - alpha) * crop + alpha * colourise(explanation.heat)
    buf = io.BytesIO()
    Image.fromarray(blended.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
