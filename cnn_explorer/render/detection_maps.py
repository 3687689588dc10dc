"""Explanations of detections drawn over their images, with the ground-truth mask the localization check uses."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cnn_explorer.interpret.detection.checks import METHOD_TITLES, ExplanationChecks
from cnn_explorer.render.figures import new_figure
from cnn_explorer.render.image import clip_to_percentile, to_hwc_uint8

TILE_SIZE = (3.2, 2.6)  # inches per tile (width, height): a ~320 x 430 image and a two-line title
MAX_ROWS = 4


def checks_figure(checks: ExplanationChecks, *, max_rows: int = MAX_ROWS) -> Figure:
    """One row per explained object (the first ``max_rows``): the image with the ground-truth mask (cyan outline)
    and the explained detection's box (yellow), then each method's map (its positive part, scaled to its 99th
    percentile, the part the energy share counts) over the greyed image, titled with that object's energy share
    and the chance share.

    Args:
        checks: from :func:`~cnn_explorer.interpret.detection.checks.explanation_checks`.
        max_rows: most objects drawn, >= 1.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    objects = checks.objects[:max_rows]
    methods = list(checks.methods)
    columns = 1 + len(methods)
    fig = new_figure((TILE_SIZE[0] * columns, TILE_SIZE[1] * len(objects)), constrained=True)
    axes = fig.subplots(len(objects), columns, squeeze=False)
    for row, target in enumerate(objects):
        image = checks.images[target.image_index]
        rgb = to_hwc_uint8(image[None])[0]
        grey = rgb.mean(axis=2, keepdims=True).repeat(3, axis=2) / 255
        mask = target.mask.float().numpy()
        panels = [(None, f"object {row + 1}: detection score {target.score:.2f}")]
        for method in methods:
            result = checks.methods[method]  # its maps and shares are in the order of checks.objects
            panels.append(
                (
                    result.maps[row],
                    f"{METHOD_TITLES[method]}: share {result.share[row]:.2f}\n(chance {result.chance[row]:.2f})",
                )
            )
        for ax, (saliency, title) in zip(axes[row], panels, strict=True):
            if saliency is None:
                ax.imshow(rgb)
            else:
                ax.imshow(grey * 0.6)
                scaled, _ = clip_to_percentile(saliency.clamp_min(0)[None])
                ax.imshow(scaled[0].numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
            ax.contour(mask, levels=[0.5], colors="cyan", linewidths=1)
            x1, y1, x2, y2 = target.box.tolist()
            # Box coordinates are pixel edges; imshow centres pixel i at i, so its edges are at i -+ 0.5.
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor="yellow", linewidth=1))
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    return fig
