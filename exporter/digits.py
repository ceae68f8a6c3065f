"""LeNet-5 trained on scikit-learn's bundled 8x8 handwritten digits.

The digits are rendered as 8-bit grey images and resized to 32x32 with
Pillow, exactly as the server will preprocess a PNG of a digit, so the
trained network sees at serving time what it saw in training. The trained
checkpoint is cached (keyed by the recipe) and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from exporter.weights import file_sha256


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    test_fraction: float = 0.25
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_shift: int = 3  # random translation, pixels: the set is small, writing wanders
    # The train/held-out split's seed (None: ``seed``). Ensemble members share one split,
    # so that no member has trained on the digits the ensemble is scored on.
    split_seed: int | None = None

    def key_fields(self) -> dict:
        """The recipe as cached: a split seed equal to the default is left out, so the
        plain recipe keeps the checkpoint key it had before split_seed existed."""
        fields = asdict(self)
        if fields["split_seed"] in (None, self.seed):
            del fields["split_seed"]
        return fields


def cache_dir() -> Path:
    """Where trained checkpoints live: $CNN_SERVING_CACHE or ~/.cache/cnn-serving."""
    root = os.environ.get("CNN_SERVING_CACHE") or Path.home() / ".cache" / "cnn-serving"
    return Path(root)


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 32x32 images (white ink on black) and labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    small = np.clip(np.round(data.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    images = np.stack(
        [np.asarray(Image.fromarray(d, "L").resize((32, 32), Image.BILINEAR)) for d in small]
    )
    return images, data.target.astype(np.int64)


def split(recipe: Recipe) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train/held-out split, fixed by the recipe's seed."""
    from sklearn.model_selection import train_test_split

    images, labels = digit_images()
    return train_test_split(
        images,
        labels,
        test_size=recipe.test_fraction,
        random_state=recipe.seed if recipe.split_seed is None else recipe.split_seed,
        stratify=labels,
    )


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 Nx32x32 -> normalised float Nx1x32x32 (mean 0.5, std 0.5, as in the config)."""
    x = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
    return (x - 0.5) / 0.5


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    pred = model(to_tensor(images)).argmax(1).numpy()
    return float((pred == labels).mean())


def _shifted(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Each image moved by a random offset; vacated pixels are background."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, [max_shift] * 4, value=float(x.min()))
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def train(model: nn.Module, recipe: Recipe) -> dict:
    x_train, x_test, y_train, y_test = split(recipe)
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    xt, yt = to_tensor(x_train), torch.from_numpy(y_train)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(recipe.epochs):
        model.train()
        for idx in torch.randperm(len(xt)).split(recipe.batch_size):
            opt.zero_grad()
            loss_fn(model(_shifted(xt[idx], recipe.max_shift, gen)), yt[idx]).backward()
            opt.step()
        sched.step()
    return {
        "heldout_accuracy": accuracy(model, x_test, y_test),
        "train_accuracy": accuracy(model, x_train, y_train),
        "train_images": int(len(x_train)),
        "heldout_images": int(len(x_test)),
        "train_seconds": round(time.perf_counter() - start, 2),
    }


def load_or_train_lenet(model: nn.Module, recipe: Recipe | None = None) -> dict:
    """Load the cached digits checkpoint into ``model``, training it first if needed."""
    recipe = recipe or Recipe()
    key = hashlib.sha256(json.dumps(recipe.key_fields(), sort_keys=True).encode()).hexdigest()[:12]
    ckpt = cache_dir() / f"lenet5_digits_{key}.pt"
    meta_path = ckpt.with_suffix(".json")
    if ckpt.is_file() and meta_path.is_file():
        model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
        metrics = json.loads(meta_path.read_text())["metrics"]
        cached = True
    else:
        metrics = train(model, recipe)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, ckpt)
        meta_path.write_text(
            json.dumps({"recipe": recipe.key_fields(), "metrics": metrics}, indent=2)
        )
        cached = False
    model.eval()
    return {
        "source": "trained here on scikit-learn's 8x8 digits (resized to 32x32), "
        f"recipe {recipe.key_fields()}",
        "description": f"LeNet-5 trained on sklearn digits: held-out accuracy "
        f"{metrics['heldout_accuracy']:.2%} on {metrics['heldout_images']} images"
        + (" (cached checkpoint)" if cached else ""),
        "file": str(ckpt),
        "sha256": file_sha256(ckpt),
        "metrics": metrics,
        "trained": True,
    }
