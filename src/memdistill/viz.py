"""Pictures of memories: image grids and a one-page view of a memory file.

Drawn with a bare :class:`matplotlib.figure.Figure` on the Agg canvas (no pyplot, no
global state); files are written atomically.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._io import atomic_write_bytes
from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .memory.file import MemoryFile

__all__ = ["render_grid", "render_memory", "bases_for_display", "export_png"]

_PAD = 1  # pixels between tiles


def render_grid(
    images: torch.Tensor,
    nrow: int,
    path: str | Path,
    title: str | None = None,
    row_labels: Sequence[str] | None = None,
) -> Path:
    """Draw ``images`` ``(N, C, H, W)`` in ``[0, 1]`` as a grid of ``nrow`` images per
    row (grayscale when ``C == 1``) and write a PNG to ``path``.

    ``row_labels`` (one per row) are written left of the rows.
    """
    tiles = _check_images(images)
    if nrow < 1:
        raise ConfigError(f"nrow must be >= 1, got {nrow}")
    rows = max(1, math.ceil(len(tiles) / nrow))
    if row_labels is not None and len(row_labels) != rows:
        raise ConfigError(f"{rows} rows but {len(row_labels)} row labels")
    mosaic = _mosaic(tiles, nrow)
    fig = _figure([(mosaic, list(row_labels) if row_labels is not None else None, tiles.shape[2])], title)
    return _write(fig, path)


def render_memory(mem_file: "MemoryFile", path: str | Path, max_per_class: int = 10) -> Path:
    """One PNG of a memory: its bases (if any, each scaled to its own range) on top,
    then up to ``max_per_class`` recalled examples per class (rows labelled with the
    class names), all in pixel space."""
    if max_per_class < 1:
        raise ConfigError(f"max_per_class must be >= 1, got {max_per_class}")
    memory = mem_file.memory
    per_class = min(memory.query_slots, max_per_class)  # slots every class holds (a ragged memory: the fewest)
    with torch.no_grad():
        classes = torch.arange(mem_file.num_classes).repeat_interleave(per_class)
        slots = torch.arange(per_class).repeat(mem_file.num_classes)
        x, _ = memory.recall_from(memory.tensors, classes, slots)
    examples = mem_file.to_pixels(x.float()).cpu()
    h = examples.shape[2]
    sections = []
    bases = bases_for_display(mem_file)
    if bases is not None:
        ncol = max(per_class, min(len(bases), 8))
        nrows = math.ceil(len(bases) / ncol)
        labels = ["bases"] + [""] * (nrows - 1)
        sections.append((_mosaic(bases, ncol), labels, h))
    names = [f"{c}: {n}" if len(n) <= 24 else f"{c}: {n[:23]}…" for c, n in enumerate(mem_file.classes)]
    sections.append((_mosaic(examples, per_class), names, h))
    counts = memory.class_slot_counts()
    held = f"{min(counts)}-{max(counts)}" if memory.ragged else f"{mem_file.slots}"
    title = (f"{mem_file.kind} memory of {mem_file.dataset}: {mem_file.num_classes} classes x "
             f"{held} recalled (showing {per_class})")
    return _write(_figure(sections, title), path)


def bases_for_display(mem_file: "MemoryFile") -> torch.Tensor | None:
    """The memory's bases (``None`` if it has none) as ``(K, C, H, W)`` in ``[0, 1]``:
    upsampled to the image size, mapped to pixel space by the linear part of the
    inverse normalisation (ZCA, then std; a basis is a direction, so no mean), then
    each basis min-max scaled on its own."""
    bases = mem_file.memory.tensors.get("bases")
    if bases is None:
        return None
    b = bases.detach().to(torch.float64).cpu()
    c, h, w = mem_file.image_shape
    if tuple(b.shape[-2:]) != (h, w):
        b = F.interpolate(b, size=(h, w), mode="bilinear", align_corners=False)
    if mem_file.zca is not None:
        b = mem_file.zca.inverse(b) - mem_file.zca.inverse(torch.zeros_like(b[:1]))
    b = b * torch.tensor(mem_file.std, dtype=b.dtype).view(1, -1, 1, 1)
    flat = b.flatten(1)
    low, high = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    span = high - low
    scaled = torch.where(span > 0, (b - low) / span.clamp_min(1e-12), torch.full_like(b, 0.5))
    return scaled.float()


def export_png(mem_file: "MemoryFile", folder: str | Path) -> list[Path]:
    """Write one PNG per class of ``mem_file`` (its recalled examples in pixel space,
    ``class-<index>-<name>.png``) and, when the memory has bases, ``bases.png`` (each
    basis scaled to its own range) into ``folder``. Returns the paths written."""
    folder = Path(folder)
    written = []
    bases = bases_for_display(mem_file)
    if bases is not None:
        written.append(render_grid(bases, min(len(bases), 8), folder / "bases.png",
                                   title=f"{len(bases)} bases ({mem_file.dataset})"))
    for c, name in enumerate(mem_file.classes):
        x, _ = mem_file.recall(classes=[c])
        written.append(render_grid(mem_file.to_pixels(x), min(len(x), 10),
                                   folder / f"class-{c:03d}-{_file_safe(name)}.png",
                                   title=f"class {c}: {name} ({len(x)} recalled)"))
    return written


# ----------------------------------------------------------------------------- helpers
def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(f"images must be a tensor (N, C, H, W) with C = 1 or 3, got {shape}")
    if images.shape[0] == 0:
        raise ConfigError("no images to draw")
    x = images.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ConfigError("the images contain NaN or Inf")
    return x.clamp(0.0, 1.0)


def _mosaic(tiles: torch.Tensor, ncol: int) -> np.ndarray:
    """``(N, C, H, W)`` tiles as one ``(rows*(H+pad)-pad, ncol*(W+pad)-pad, C)`` array;
    gaps and unused cells are white."""
    n, c, h, w = tiles.shape
    rows = math.ceil(n / ncol)
    out = np.ones((rows * (h + _PAD) - _PAD, ncol * (w + _PAD) - _PAD, c), dtype=np.float32)
    arr = tiles.permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, q = divmod(i, ncol)
        out[r * (h + _PAD):r * (h + _PAD) + h, q * (w + _PAD):q * (w + _PAD) + w] = arr[i]
    return out


def _figure(sections: list[tuple[np.ndarray, list[str] | None, int]], title: str | None):
    """A figure with one image axes per section, stacked; ``(mosaic, row_labels, tile_h)``."""
    from matplotlib.figure import Figure

    cell_in = 0.45  # inches per tile
    heights = [m.shape[0] / (h + _PAD) for m, _, h in sections]
    width_tiles = max(m.shape[1] for m, _, _ in sections) / (sections[0][2] + _PAD)
    label_chars = max((len(s) for _, labels, _ in sections for s in (labels or [])), default=0)
    fig_w = max(3.0, width_tiles * cell_in + 0.09 * label_chars + 0.4, 0.075 * len(title or "") + 0.4)
    fig_h = sum(heights) * cell_in + (0.5 if title else 0.1) + 0.25 * len(sections)
    fig = Figure(figsize=(fig_w, fig_h), dpi=100, layout="constrained")
    axes = fig.subplots(len(sections), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (mosaic, labels, h) in zip(axes, sections):
        gray = mosaic.shape[2] == 1
        ax.imshow(mosaic[..., 0] if gray else mosaic, cmap="gray" if gray else None,
                  vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
        ax.set_xticks([])
        if labels:
            ax.set_yticks([r * (h + _PAD) + (h - 1) / 2 for r in range(len(labels))], labels, fontsize=8)
            ax.tick_params(axis="y", length=0)
        else:
            ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _write(fig, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def _file_safe(name: str) -> str:
    out = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in name)
    return out.strip("_")[:40] or "class"
