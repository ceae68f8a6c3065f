"""A request's images as uint8 crops, normalised only into the batch that runs them.

The decode pool resizes and crops each image (Pillow, uint8); the float32 values the
model reads are written by ``write_into`` straight into the rows of the batch buffer
the runtime is given, on the batch worker's thread (numpy ufuncs, which release the
GIL). So every image row is written once as float32, whatever the batch gathers: one
request or several, in any order, with or without a failed request between them
(issue 28). Queued requests hold uint8 crops, a quarter of the float rows' bytes.

It answers the batcher as a float32 ``[n, C, crop, crop]`` array would (``shape``,
``dtype``, ``len``), so it batches with raw FP32 requests of the same shape.
"""

from __future__ import annotations

import numpy as np

from imaging.transform import batch_buffer, channels, normalise_into
from modelrepo.spec import Preprocess

FLOAT32 = np.dtype(np.float32)


class PixelRows:
    """``crops``: one HWC uint8 crop per image (set by the decode jobs, in any order)."""

    __slots__ = ("crops", "pre", "shape")

    dtype = FLOAT32

    def __init__(self, n: int, pre: Preprocess) -> None:
        if n < 1:
            raise ValueError(f"a request holds at least one image, got {n}")
        self.crops: list[np.ndarray | None] = [None] * n
        self.pre = pre
        self.shape = (n, channels(pre), pre.crop_size, pre.crop_size)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def write_into(self, out: np.ndarray) -> None:
        """Normalise each crop into its row of ``out`` (float32, this request's shape)."""
        if out.shape != self.shape or out.dtype != FLOAT32:
            raise ValueError(
                f"rows of shape {self.shape} float32 cannot be written into "
                f"{list(out.shape)} {out.dtype}"
            )
        for i, crop in enumerate(self.crops):
            if crop is None:
                raise ValueError(f"image {i} of {len(self)} was never decoded")
            normalise_into(crop, out[i], self.pre)

    def array(self) -> np.ndarray:
        """The float32 rows on their own, for a reader outside a batch (explanations)."""
        out = batch_buffer(len(self), self.pre)
        self.write_into(out)
        return out
