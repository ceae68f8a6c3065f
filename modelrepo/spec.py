"""Reading a Triton-layout model repository into ``ModelSpec`` objects.

config.pbtxt is parsed with protobuf's text format into our ModelConfig
(field-compatible with Triton's), so a malformed file fails with protobuf's
own line/column message, prefixed with the file it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from modelrepo import keys
from modelrepo.keys import CONFIG_FILE
from modelrepo.names import RULE, valid_name
from modelrepo.reading import DEFAULT_LIMITS, ReadLimits, UnsafeFileError, read_text
from protos import model_config_pb2 as mc

_MODEL_FILES = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
# Triton lets a config name its backend instead of a platform.
_BACKEND_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}


class ModelConfigError(ValueError):
    """A model directory whose config or files cannot be served."""


@dataclass(frozen=True)
class Preprocess:
    """How an encoded image becomes the model's input (from config parameters)."""

    color_mode: str = "RGB"  # RGB or L
    resize_size: int = 256
    crop_size: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path
    config: mc.ModelConfig
    versions: tuple[int, ...]
    labels: tuple[str, ...]
    preprocess: Preprocess

    @property
    def platform(self) -> str:
        return self.config.platform

    @property
    def input_dims(self) -> tuple[int, ...]:
        return tuple(self.config.input[0].dims)

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    @property
    def image_dims(self) -> tuple[int, ...]:
        """One image's input shape; dynamic dimensions take the crop size."""
        return fixed_dims(self.input_dims, self.preprocess.crop_size)

    def version_dir(self, version: int | None = None) -> Path:
        """The folder of ``version`` (latest when None)."""
        if not self.versions:
            raise ModelConfigError(f"model '{self.name}' has no version folders in {self.path}")
        chosen = self.versions[-1] if version is None else version
        if chosen not in self.versions:
            raise ModelConfigError(
                f"model '{self.name}' has no version {chosen}; available: {list(self.versions)}"
            )
        return self.path / str(chosen)

    def model_file(self, version: int | None = None) -> Path:
        filename = self.config.default_model_filename or _MODEL_FILES.get(self.platform, "")
        return self.version_dir(version) / file_name(filename, "default_model_filename")


def file_name(name: str, field: str) -> str:
    """A file name from a config, checked before it is joined to a folder."""
    if not valid_name(name):
        raise ModelConfigError(f"{field} {name[:80]!r}: a file name must be {RULE}")
    return name


def fixed_dims(dims: tuple[int, ...] | list[int], crop_size: int) -> tuple[int, ...]:
    """``dims`` with every dynamic (-1) dimension set to ``crop_size``: the image size the
    server decodes to, so a tensor of that shape is what an encoded image becomes."""
    return tuple(crop_size if d < 0 else int(d) for d in dims)


def image_dims(config: mc.ModelConfig) -> tuple[int, ...]:
    """One image's input shape from ``config`` (dynamic dimensions take the crop size)."""
    return fixed_dims(tuple(config.input[0].dims), preprocess_from(config).crop_size)


def parse_config(path: Path, max_bytes: int = DEFAULT_LIMITS.config_bytes) -> mc.ModelConfig:
    """``path`` (a config.pbtxt) parsed; bounded and regular-file-only (reading.py)."""
    try:
        text = read_text(path, max_bytes, "config_bytes")
    except UnsafeFileError as exc:
        raise ModelConfigError(str(exc)) from exc
    return parse_config_text(text, str(path))


def parse_config_text(text: str, source: str) -> mc.ModelConfig:
    """A ModelConfig in protobuf text; a malformed one fails naming ``source`` and its line."""
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        # protobuf says "line:col : what"; quoting the line shows the field it is about.
        line = exc.GetLine() or 0
        lines = text.splitlines()
        quoted = lines[line - 1].strip()[:120] if 0 < line <= len(lines) else ""
        shown = f' (line {line}: "{quoted}")' if quoted and quoted not in str(exc) else ""
        raise ModelConfigError(f"{source}:{exc}{shown}") from exc


def _param(config: mc.ModelConfig, key: str, default: str) -> str:
    return config.parameters[key].string_value if key in config.parameters else default


def _floats(text: str, key: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise ModelConfigError(f"parameter {key}='{text}' is not a comma-separated list") from exc


def _joined(values: tuple[float, ...]) -> str:
    return ",".join(str(v) for v in values)


def preprocess_from(config: mc.ModelConfig) -> Preprocess:
    base = Preprocess()
    try:
        pre = Preprocess(
            color_mode=_param(config, keys.COLOR_MODE, base.color_mode),
            resize_size=int(_param(config, keys.RESIZE_SIZE, str(base.resize_size))),
            crop_size=int(_param(config, keys.CROP_SIZE, str(base.crop_size))),
            interpolation=_param(config, keys.INTERPOLATION, base.interpolation),
            mean=_floats(_param(config, keys.MEAN, _joined(base.mean)), "mean"),
            std=_floats(_param(config, keys.STD, _joined(base.std)), "std"),
        )
    except ValueError as exc:
        raise ModelConfigError(f"model '{config.name}': bad preprocess parameter: {exc}") from exc
    channels = 1 if pre.color_mode == "L" else 3
    if pre.color_mode not in ("RGB", "L") or len(pre.mean) != channels or len(pre.std) != channels:
        raise ModelConfigError(
            f"model '{config.name}': preprocess color_mode '{pre.color_mode}' (RGB or L) needs "
            f"{channels} mean/std values, got {len(pre.mean)}/{len(pre.std)}"
        )
    return pre


def _version_dir(path: Path) -> bool:
    return path.name.isascii() and path.name.isdigit() and path.is_dir()


def load_spec(
    model_dir: Path, limits: ReadLimits = DEFAULT_LIMITS, config: mc.ModelConfig | None = None
) -> ModelSpec:
    """Read one model directory; raises ModelConfigError naming what is wrong.

    ``config`` replaces the folder's config.pbtxt (a load request's override).
    """
    model_dir = Path(model_dir)
    if config is None:
        config = parse_config(model_dir / CONFIG_FILE, limits.config_bytes)
    if config.name and config.name != model_dir.name:
        raise ModelConfigError(
            f"{model_dir.name}/{CONFIG_FILE}: name '{config.name}' differs from its folder "
            f"'{model_dir.name}'"
        )
    config.name = model_dir.name
    if not config.platform and config.backend in _BACKEND_PLATFORMS:
        config.platform = _BACKEND_PLATFORMS[config.backend]
    if len(config.input) != 1 or len(config.output) < 1:
        raise ModelConfigError(f"model '{config.name}': expected one input and an output")
    labels: tuple[str, ...] = ()
    label_file = config.output[0].label_filename
    if label_file:
        path = model_dir / file_name(label_file, "label_filename")
        try:
            labels = tuple(read_text(path, limits.labels_bytes, "labels_bytes").splitlines())
        except UnsafeFileError as exc:
            raise ModelConfigError(str(exc)) from exc
    versions = tuple(sorted(int(p.name) for p in model_dir.iterdir() if _version_dir(p)))
    return ModelSpec(
        name=config.name,
        path=model_dir,
        config=config,
        versions=versions,
        labels=labels,
        preprocess=preprocess_from(config),
    )
