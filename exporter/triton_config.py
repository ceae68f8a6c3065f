"""The ModelConfig an export writes: the model's tensors, preprocessing and serving settings.

Everything about the repository's format (the serving half, parameter keys,
atomic writes, versions) lives in ``modelrepo``; this module only says what one
exported model looks like in it.
"""

from __future__ import annotations

from exporter.config import ModelCfg
from exporter.onnx_export import INPUT_NAME, OUTPUT_NAME
from modelrepo import keys
from modelrepo.serving import ServingConfig, write_serving
from protos import model_config_pb2 as mc


def model_config(
    cfg: ModelCfg,
    serving: ServingConfig,
    *,
    input_hw: tuple[int, int],
    dynamic_hw: bool,
    parameters: dict[str, str],
    platform: str = "onnxruntime_onnx",
    model_filename: str = "model.onnx",
) -> mc.ModelConfig:
    """The Triton ModelConfig for ``cfg`` as exported."""
    height, width = (-1, -1) if dynamic_hw else input_hw
    config = mc.ModelConfig(
        name=cfg.name,
        platform=platform,
        default_model_filename=model_filename,
        version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1)),
        input=[
            mc.ModelInput(
                name=INPUT_NAME,
                data_type=mc.TYPE_FP32,
                format=mc.ModelInput.FORMAT_NCHW,
                dims=[cfg.channels, height, width],
            )
        ],
        output=[
            mc.ModelOutput(
                name=OUTPUT_NAME,
                data_type=mc.TYPE_FP32,
                dims=[cfg.num_classes],
                label_filename=keys.LABELS_FILE,
            )
        ],
    )
    write_serving(config, serving)
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config
