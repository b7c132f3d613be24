"""Training-time augmentation: framing (random resized crops) then geometry and grey levels.

    cfg = AugmentConfig(crop_scale=(0.35, 1.0))
    x01 = crop_batch(films, idx, size=224, rng=rng, cfg=cfg)     # uint8 films -> float (N,1,S,S) in [0,1]
    x01 = augment(x01, gen, cfg)

Why random resized crops: in the training split the film's width/height alone separates
the classes (AUROC 0.87), and a fixed center crop still carries it because the field of view
shrinks as films get wider. Crops over a wide range of scale and aspect make framing a nuisance
the network has to ignore instead of a shortcut. At inference the center crop stays: it is one
of the framings the crops cover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pneumo_edge.edge.imaging import input_box, to_unit


@dataclass
class AugmentConfig:
    """The defaults are the recipe the study picked (bench/study: "rrc-photo")."""

    # Framing: area fraction of the film and log-uniform aspect of each crop. None = the fixed
    # center crop (the inference view) for every sample.
    crop_scale: tuple[float, float] | None = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    # Geometry after the crop.
    flip: bool = True
    max_rot: float = 15.0  # degrees
    scale: float = 0.1  # +- zoom
    shift: float = 0.05  # +- fraction of the side
    # Grey levels.
    jitter: float = 0.15  # +- brightness and contrast
    gamma: float = 0.4  # log-uniform gamma in [exp(-g), exp(g)]; 0 = off
    blur_p: float = 0.25  # probability of a Gaussian blur, sigma uniform in (0.3, blur_sigma] px
    blur_sigma: float = 1.2
    noise_p: float = 0.25  # probability of additive Gaussian noise with std uniform in (0, noise_std]
    noise_std: float = 0.03


def center_box(h: int, w: int) -> tuple[int, int, int, int]:
    """The central square (left, top, right, bottom): the view inference uses (`imaging.input_box`)."""
    return input_box((h, w), "center-crop-bilinear")


def random_box(h: int, w: int, rng: np.random.Generator, scale: tuple[float, float],
               ratio: tuple[float, float]) -> tuple[float, float, float, float]:
    """A crop box (left, top, right, bottom) covering `scale` of the film's area at aspect `ratio`.

    Ten tries as torchvision does; a crop that does not fit falls back to the center square.
    """
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_r))
        cw, ch = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if cw <= w and ch <= h:
            left, top = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            return left, top, left + cw, top + ch
    return center_box(h, w)


def crop_batch(films: list[np.ndarray], idx: np.ndarray, size: int, rng: np.random.Generator,
               cfg: AugmentConfig) -> torch.Tensor:
    """Crop each film (uint8, any aspect) by the config and resize to size x size: float (N,1,S,S) in [0,1]."""
    out = np.empty((len(idx), size, size), np.uint8)
    for j, i in enumerate(idx):
        film = films[i]
        h, w = film.shape
        box = center_box(h, w) if cfg.crop_scale is None else random_box(h, w, rng, cfg.crop_scale, cfg.crop_ratio)
        out[j] = np.asarray(Image.fromarray(film).resize((size, size), Image.BILINEAR, box=box))
    return torch.from_numpy(to_unit(out)).unsqueeze(1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample (x: (N,1,H,W))."""
    radius = 3
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # (N, K)
    n = x.shape[0]
    xp = F.pad(x.transpose(0, 1), (radius, radius, 0, 0), mode="replicate")  # (1,N,H,W+2r)
    x = F.conv2d(xp, k[:, None, None, :], groups=n)
    xp = F.pad(x, (0, 0, radius, radius), mode="replicate")
    x = F.conv2d(xp, k[:, None, :, None], groups=n)
    return x.transpose(0, 1)


def augment(x: torch.Tensor, gen: torch.Generator, cfg: AugmentConfig | None = None) -> torch.Tensor:
    """Flip, rotate/scale/shift, then grey-level changes, on a float batch (N,1,H,W) in [0, 1]."""
    cfg = cfg or AugmentConfig()
    n = x.shape[0]
    u = lambda: torch.rand(n, generator=gen) * 2 - 1  # noqa: E731 - uniform in [-1, 1]
    if cfg.flip:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    ang = u() * math.radians(cfg.max_rot)
    s = 1.0 + u() * cfg.scale
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, u() * cfg.shift], 1),
                         torch.stack([sin, cos, u() * cfg.shift], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg.gamma > 0:
        g = torch.exp(u() * cfg.gamma)
        x = x.clamp(1e-6, 1.0) ** g[:, None, None, None]
    if cfg.blur_p > 0:
        sigma = 0.3 + torch.rand(n, generator=gen) * (cfg.blur_sigma - 0.3)
        blurred = _gaussian_blur(x, sigma)
        pick = torch.rand(n, generator=gen) < cfg.blur_p
        x = torch.where(pick[:, None, None, None], blurred, x)
    bright = 1.0 + u() * cfg.jitter
    contrast = 1.0 + u() * cfg.jitter
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast[:, None, None, None] + mean * bright[:, None, None, None]
    if cfg.noise_p > 0:
        std = torch.rand(n, generator=gen) * cfg.noise_std
        pick = (torch.rand(n, generator=gen) < cfg.noise_p).float()
        x = x + torch.randn(x.shape, generator=gen) * (std * pick)[:, None, None, None]
    return x.clamp_(0.0, 1.0)
