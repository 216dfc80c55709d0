"""The lab's augmentation gallery (d2l image augmentation, section 1.1.1) as one labelled PNG.

Each of the lab's torchvision presets is applied N times to one image, at the lab's sizes
(RandomResizedCrop to 200x200); the grid has a row per preset, the original image first.

    python jobs/aug_gallery.py --image cat.jpg --output gallery.png [--samples 8] [--seed 0]
"""

from __future__ import annotations

import sys

import torch  # noqa: E402

import _common
from cvray.classification.augment import lab_transform  # noqa: E402
from cvray.grids import save_image_grid  # noqa: E402
from cvray.images import load_image  # noqa: E402

# (row label, preset name) in the lab's order of presentation.
GALLERY_ROWS = (
    ("h-flip", "flip"),
    ("v-flip", "vflip"),
    ("resized crop", "crop"),
    ("brightness", "brightness"),
    ("hue", "hue"),
    ("color jitter", "color"),
    ("flip+color+crop", "all"),
)
MAX_SIDE = 1024  # larger photos are shrunk first: the gallery cells are ~140 px wide


def build_parser():
    parser = _common.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="input image: local path or object-store URI")
    parser.add_argument("--output", required=True, help="PNG to write (its folder is created)")
    parser.add_argument("--samples", type=_common.positive_int, default=8,
                        help="augmented samples per preset (the lab shows 2x4 = 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the augmentations' randomness")
    parser.add_argument("--crop-size", type=_common.positive_int, nargs=2, default=(200, 200),
                        metavar=("H", "W"), help="RandomResizedCrop output (the lab's 200x200)")
    parser.add_argument("--palette-colors", type=_common.positive_int, default=None,
                        help="quantise the PNG to this many colours (smaller file, e.g. 256)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    image = load_image(args.image, max_side=MAX_SIDE)
    rows = [("original", [image])]
    # torchvision v2 transforms draw from torch's global RNG: seed a forked copy so that calling
    # main() leaves the caller's random state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        for label, preset in GALLERY_ROWS:
            transform = lab_transform(preset, crop_size=tuple(args.crop_size))
            rows.append((label, [transform(image) for _ in range(args.samples)]))
    title = f"{args.image.rsplit('/', 1)[-1]}: the lab's augmentations, {args.samples} samples each (seed {args.seed})"
    width, height = save_image_grid(rows, args.output, title=title, palette_colors=args.palette_colors)
    print(f"wrote {args.output} ({width}x{height} px, {len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(_common.run(main))
