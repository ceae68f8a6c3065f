"""The names config.pbtxt uses for our own settings: files and ``parameters`` keys.

Every reader and writer of a model repository spells them through these
constants, so a key cannot drift between the exporter, the server, the tuner and
the clients. Values are strings (Triton's ``ModelParameter.string_value``).
"""

from __future__ import annotations

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
EXPORT_REPORT_FILE = "export.json"

# Preprocessing: how an encoded image becomes the model's input.
COLOR_MODE = "preprocess.color_mode"  # RGB or L
RESIZE_SIZE = "preprocess.resize_size"  # shorter side before the centre crop
CROP_SIZE = "preprocess.crop_size"  # also the H/W a dynamic input dimension takes
INTERPOLATION = "preprocess.interpolation"
MEAN = "preprocess.mean"  # comma-separated, one per channel
STD = "preprocess.std"

# Provenance, written by the exporter and shown by its predict command.
MODEL_FAMILY = "model.family"
MODEL_SOURCE = "model.source"
MODEL_PRECISION = "model.precision"
WEIGHTS_KIND = "weights.kind"
WEIGHTS_TRAINED = "weights.trained"  # "true" / "false"
WEIGHTS_DESCRIPTION = "weights.description"

# Serving: ONNX Runtime intra-op threads per instance (0 or absent: the runtime's default).
INTRA_OP_THREADS = "intra_op_thread_count"
# "onnxruntime.<key>": an ONNX Runtime session config entry <key> for this model.
ONNXRUNTIME_PREFIX = "onnxruntime."
# What the server adds to a ModelConfig response: "runtime.<key>" describes the backend.
RUNTIME_PREFIX = "runtime."

# Class activation maps: the name of the extra ONNX output holding the last feature map
# [N, C, h, w] (absent: the model has no CAM data); the head's weights lie in each version
# folder as CAM_HEAD_FILE (modelrepo/cam.py).
CAM_FEATURES_OUTPUT = "cam_features_output"
CAM_HEAD_FILE = "cam_head.npz"
