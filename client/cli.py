"""``python -m client``: classify images, round-trip tensors and inspect a running server.

Expected failures (server unreachable, unknown model, unreadable image or
.npy file, a request the server refuses) print one ``error:`` line and exit
with status 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from client.client import (
    DEFAULT_URL,
    Classification,
    ClientError,
    InferenceClient,
    TlsConfig,
)
from client.explain import METHODS, explain_image, overlay
from imaging.decode import ImageDecodeError, decode
from imaging.preprocess import preprocess_batch
from modelrepo.spec import ModelConfigError, Preprocess, fixed_dims, preprocess_from

EXIT_ERROR = 2
# Keep each classify request well under the 64 MiB message limit.
MAX_REQUEST_BYTES = 48 << 20
NPY_MAGIC = b"\x93NUMPY"


class UsageError(Exception):
    """A problem with the user's input found before (or without) talking to the server."""


def _read_images(paths: Sequence[str]) -> list[bytes]:
    """Read every file first, so a typo fails before any request is sent."""
    images = []
    for name in paths:
        try:
            images.append(Path(name).read_bytes())
        except OSError as exc:
            raise UsageError(f"cannot read image file '{name}': {exc.strerror or exc}") from exc
    return images


def _chunks(images: list[bytes], max_batch: int) -> Iterator[range]:
    """Index ranges that respect the model's max_batch_size and the message size limit."""
    start = 0
    while start < len(images):
        end, size = start, 0
        while end < len(images) and end - start < max_batch:
            if end > start and size + len(images[end]) > MAX_REQUEST_BYTES:
                break
            size += len(images[end])
            end += 1
        yield range(start, end)
        start = end


def _culprit(names: list[str], message: str) -> str | None:
    """The file a server error is about: the server names the failing element by index."""
    if len(names) == 1:
        return names[0]
    found = re.search(r"\belement (\d+)\b", message)
    index = int(found.group(1)) if found else -1
    return names[index] if 0 <= index < len(names) else None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _send(
    client: InferenceClient, args: argparse.Namespace, images: list[bytes], pre: Preprocess | None
) -> list[list[Classification]]:
    """One request in the chosen form: encoded files, decoded pixels or FP32 tensors."""
    if args.send == "encoded" or pre is None:
        return client.classify(args.model, images, top_k=args.top_k, version=args.version)
    try:
        if args.send == "tensor":
            batch = preprocess_batch(images, pre)
            return client.classify_tensor(args.model, batch, args.top_k, args.version)
        pixels = np.asarray(decode(images[0], pre, draft=False))
    except ImageDecodeError as exc:
        raise ClientError(str(exc)) from None
    pixels = pixels[None, :, :, None] if pixels.ndim == 2 else pixels[None]
    return client.classify_pixels(args.model, pixels, args.top_k, args.version)


def cmd_classify(client: InferenceClient, args: argparse.Namespace) -> None:
    images = _read_images(args.files)
    config = client.config(args.model, args.version)
    pre = None if args.send == "encoded" else preprocess_from(config)
    # Pixel arrays of different sizes cannot share a tensor: one image per request.
    max_batch = 1 if args.send == "pixels" else max(1, config.max_batch_size)
    for rows in _chunks(images, max_batch):
        names = [args.files[i] for i in rows]
        try:
            results = _send(client, args, [images[i] for i in rows], pre)
        except ClientError as exc:
            culprit = _culprit(names, str(exc))
            raise ClientError(f"{culprit}: {exc}" if culprit else str(exc), exc.code) from None
        for name, top in zip(names, results, strict=True):
            print(name)
            for entry in top:
                print(f"  {entry.score:10.4f}  {entry.index:5d}  {entry.label}")


def _load_npy(path: str) -> np.ndarray:
    """Check the magic first: on anything else np.load talks about pickles, which misleads."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
            if magic[:2] == b"PK":
                raise UsageError(f"'{path}' is an .npz archive; save one array with np.save")
            if magic != NPY_MAGIC:
                raise UsageError(f"'{path}' is not a .npy file (no NUMPY header)")
            f.seek(0)
            array = np.load(f, allow_pickle=False)
    except OSError as exc:
        raise UsageError(f"cannot read '{path}': {exc.strerror or exc}") from exc
    except (ValueError, EOFError) as exc:
        raise UsageError(f"cannot load '{path}' as a .npy array: {exc}") from exc
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise UsageError(f"'{path}' holds dtype {array.dtype}; expected a numeric array")
    return array


def _input_shape(client: InferenceClient, model: str, version: str, batch: int) -> list[int]:
    """Metadata's input shape; dynamic H/W take the model's crop size (as the server's)."""
    meta = client.metadata(model, version)
    if not meta.inputs:
        raise ClientError(f"model '{model}' declares no inputs")
    dims = [int(d) for d in meta.inputs[0].shape[1:]]
    if any(d < 0 for d in dims):
        try:
            crop = preprocess_from(client.config(model, version)).crop_size
        except ModelConfigError as exc:
            raise UsageError(f"{exc}; pass --input FILE.npy instead") from exc
        dims = list(fixed_dims(dims, crop))
    return [batch, *dims]


def cmd_infer(client: InferenceClient, args: argparse.Namespace) -> None:
    if args.input is not None:
        if args.batch is not None:
            raise UsageError("--batch applies to --random only; --input sends the file's shape")
        array = _load_npy(args.input)
        dims = client.metadata(args.model, args.version).inputs[0].shape
        if array.ndim == len(dims) - 1:  # one CHW sample without its batch axis
            array = array[None]
    else:
        shape = _input_shape(client, args.model, args.version, args.batch or 1)
        array = np.random.default_rng(args.seed).standard_normal(shape, dtype=np.float32)
    started = time.perf_counter()
    logits = client.infer(args.model, array, version=args.version)
    elapsed_ms = (time.perf_counter() - started) * 1e3
    print(f"model {args.model}: input {list(array.shape)} FP32")
    print(f"output {list(logits.shape)} FP32, round trip {elapsed_ms:.2f} ms")
    flat = logits.reshape(logits.shape[0], -1)
    for row, values in enumerate(flat):
        top = int(np.argmax(values))
        print(f"  row {row}: top-1 index {top} (value {values[top]:.4f})")


def cmd_models(client: InferenceClient, args: argparse.Namespace) -> None:
    rows = client.list_models(ready_only=args.ready)
    if not rows:
        print("no models in the repository")
        return
    width = max(5, *(len(r.name) for r in rows))
    print(f"{'MODEL':<{width}}  {'VERSION':<7}  {'STATE':<11}  REASON")
    for r in rows:
        print(f"{r.name:<{width}}  {r.version or '-':<7}  {r.state:<11}  {r.reason}".rstrip())


def cmd_metadata(client: InferenceClient, args: argparse.Namespace) -> None:
    meta = client.metadata(args.model, args.version)
    if args.json:
        print(json_format.MessageToJson(meta, indent=2))
        return
    print(f"model:    {meta.name}")
    print(f"versions: {', '.join(meta.versions)}")
    print(f"platform: {meta.platform}")
    for kind, tensors in (("input", meta.inputs), ("output", meta.outputs)):
        for t in tensors:
            print(f"{kind + ':':<9} {t.name} {t.datatype} {list(t.shape)}")


def _avg_ms(count: int, ns: int) -> str:
    return f"{ns / count / 1e6:.2f} ms" if count else "-"


def cmd_stats(client: InferenceClient, args: argparse.Namespace) -> None:
    stats = client.statistics(args.model or "", args.version)
    if args.json:
        for s in stats:
            print(json_format.MessageToJson(s, indent=2))
        return
    if not stats:
        print("no loaded models")
    for s in stats:
        i = s.inference_stats
        last = (
            datetime.fromtimestamp(s.last_inference / 1000, UTC).isoformat(timespec="seconds")
            if s.last_inference
            else "never"
        )
        print(
            f"{s.name} v{s.version}: {s.inference_count} inferences in "
            f"{s.execution_count} executions, last {last}"
        )
        success = _avg_ms(i.success.count, i.success.ns)
        print(f"  success     {i.success.count:8d} requests  avg {success}")
        print(f"  failed      {i.fail.count:8d} requests")
        print(f"  queue       avg {_avg_ms(i.queue.count, i.queue.ns)}")
        print(f"  preprocess  avg {_avg_ms(i.compute_input.count, i.compute_input.ns)}")
        print(f"  compute     avg {_avg_ms(i.compute_infer.count, i.compute_infer.ns)} per batch")
        if s.batch_stats:
            sizes = ", ".join(f"{b.batch_size}x{b.compute_infer.count}" for b in s.batch_stats)
            print(f"  batch sizes (size x executions): {sizes}")


def cmd_explain(client: InferenceClient, args: argparse.Namespace) -> None:
    image = _read_images([args.file])[0]
    found = explain_image(
        client,
        args.model,
        image,
        version=args.version,
        patch=args.patch,
        stride=args.stride,
        target=args.target,
        method=args.method,
    )
    Path(args.output).write_bytes(overlay(found))
    y, x = np.unravel_index(int(found.heat.argmax()), found.heat.shape)
    print(
        f"{args.file}: class {found.top_class} {found.top_label}; heat map peak at "
        f"(y={y}, x={x}) of {found.heat.shape[0]}x{found.heat.shape[1]} -> {args.output}"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m client", description=__doc__.split("\n")[0])
    _add_connection_arguments(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("classify", help="top-k labels for JPEG/PNG files (decoded by the server)")
    _model_args(q)
    q.add_argument("--top-k", "-k", type=_positive_int, default=5)
    q.add_argument(
        "--send",
        choices=("encoded", "pixels", "tensor"),
        default="encoded",
        help="what goes over the wire: the encoded files (BYTES, default), decoded UINT8 "
        "pixels, or FP32 tensors preprocessed here as the model's config says",
    )
    q.add_argument("files", nargs="+", metavar="FILE")
    q.set_defaults(func=cmd_classify)

    q = sub.add_parser("infer", help="raw FP32 tensor round trip; prints shape, top-1, latency")
    _add_infer_arguments(q)
    q.set_defaults(func=cmd_infer)

    q = sub.add_parser("explain", help="heat map of what the model looked at, laid over the image")
    _model_args(q)
    q.add_argument("file", metavar="FILE")
    q.add_argument(
        "--method",
        choices=METHODS,
        default="occlusion",
        help="occlusion (any model, one pass per square) or cam (class activation map: one "
        "pass, for models exported with CAM data)",
    )
    q.add_argument("--output", "-o", default="heat.png")
    q.add_argument("--patch", type=_positive_int, default=0, help="occlusion: square side (pixels)")
    q.add_argument(
        "--stride", type=_positive_int, default=0, help="occlusion: step between squares"
    )
    q.add_argument("--target", type=int, default=None, help="class to explain (default: top)")
    q.set_defaults(func=cmd_explain)

    q = sub.add_parser("models", help="models in the repository and their state")
    q.add_argument("--ready", action="store_true", help="only models ready to serve")
    q.set_defaults(func=cmd_models)

    q = sub.add_parser("metadata", help="a model's inputs, outputs and versions")
    _model_args(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_metadata)

    q = sub.add_parser("stats", help="inference statistics (every model by default)")
    _model_args(q, required=False)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_stats)
    return p


def _add_connection_arguments(p: argparse.ArgumentParser) -> None:
    """Where the server is, how long to wait, and TLS."""
    p.add_argument("--url", default=DEFAULT_URL, help=f"server host:port (default {DEFAULT_URL})")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    p.add_argument("--tls", action="store_true", help="TLS, checking the server with system CAs")
    p.add_argument("--tls-ca", type=Path, help="PEM CA that signed the server's certificate")
    p.add_argument("--tls-cert", type=Path, help="PEM client certificate (mutual TLS)")
    p.add_argument("--tls-key", type=Path, help="PEM key of --tls-cert")


def _model_args(q: argparse.ArgumentParser, required: bool = True) -> None:
    q.add_argument("--model", "-m", required=required)
    q.add_argument("--version", default="", help="model version (default: the server's)")


def _add_infer_arguments(q: argparse.ArgumentParser) -> None:
    _model_args(q)
    source = q.add_mutually_exclusive_group(required=True)
    source.add_argument("--random", action="store_true", help="a seeded normal batch")
    source.add_argument("--input", metavar="FILE.npy", help="an NCHW (or CHW) array")
    q.add_argument(
        "--batch", "-b", type=_positive_int, default=None, help="rows for --random (default 1)"
    )
    q.add_argument("--seed", type=int, default=0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tls = None
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
        tls = TlsConfig(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    try:
        with InferenceClient(args.url, timeout=args.timeout, tls=tls) as client:
            args.func(client, args)
    except (ClientError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly, as Unix tools do
        sys.stdout = open(os.devnull, "w")  # the interpreter flushes stdout at exit
        return 1
    return 0
