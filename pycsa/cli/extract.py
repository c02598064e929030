"""`pycsa extract`: a folder (or list) of images -> a features file the other commands read."""
from __future__ import annotations

import argparse

from pycsa.extract import BACKBONES, POOLINGS, SUPERGLOBAL_SCALES, extract_to_file
from pycsa.extract.extractor import MAX_SCALE, check_scales

from .output import device_arg, echo, progress_bar


def _scales(text: str):
    # ArgumentTypeError: argparse prints its message ("argument --scales: ..."); for a plain
    # ValueError it prints only "invalid _scales value", hiding what is wrong
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated factors such as 0.7071,1,1.4142, "
                                         f"got {text!r}") from None
    try:
        return check_scales(values, "--scales")  # the library's bound (0, MAX_SCALE]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--scales: ")) from None


def add_parser(sub) -> None:
    ex = sub.add_parser("extract", help="global (and local) descriptors of a folder of images, SuperGlobal's pooling")
    ex.add_argument("--images", required=True,
                    help="a folder (searched recursively) or a text file listing image paths, one per line")
    ex.add_argument("--out", required=True, help=".npz features file (work in progress is kept in OUT.partial/)")
    ex.add_argument("--backbone", default="resnet50", choices=sorted(BACKBONES),
                    help="CNN trunk (torchvision's architecture and parameter names; default resnet50)")
    ex.add_argument("--weights", default=None,
                    help="state dict file (torchvision or timm keys: conv1.*, layer1.*, ... or features.*; fc/classifier "
                         "dropped; whiten.* / head.fc.* / projection.* used as a projection). Default: torchvision's "
                         "cache ($TORCH_HOME/hub/checkpoints) when it has one. 'random': an untrained network, "
                         "to try the pipeline. Nothing is downloaded")
    ex.add_argument("--pooling", default="superglobal", choices=POOLINGS,
                    help="superglobal (ReLU+, Regional-GeM, GeM+ p=4.6; default), gem (p=3), gem+, mac, spoc")
    ex.add_argument("--scales", type=_scales, default=SUPERGLOBAL_SCALES,
                    help=f"comma-separated image scales, each in (0, {MAX_SCALE:g}] (default 0.7071,1,1.4142)")
    ex.add_argument("--scale-p", type=float, default=float("inf"),
                    help="Scale-GeM power: inf (max of normalised descriptors; default) or e.g. 10")
    ex.add_argument("--relu-plus-in-trunk", action="store_true",
                    help="ResNet: ReLU+ (floor 0.014) after the residual blocks of stages 1-3, as SuperGlobal's trunk")
    ex.add_argument("--size", type=int, default=1024, help="longest image side in pixels before scaling (default 1024)")
    ex.add_argument("--labels", help="'folders' (the first folder under --images is the class) or a file of "
                                     "'name label' lines; written as labels for `pycsa eval --labels`")
    ex.add_argument("--gnd", help="Revisited Oxford/Paris ground truth (gnd_*.pkl): --images is the folder of its "
                                  "images; writes its database and its queries cropped to their boxes, in its "
                                  "order, for `pycsa eval --gnd`")
    ex.add_argument("--locals", action="store_true",
                    help="also local descriptors for RRT: the strongest positions, PCA-reduced (the same file "
                         "then serves as --locals)")
    ex.add_argument("--max-local", type=int, default=500, help="local descriptors per image at most (default 500)")
    ex.add_argument("--local-dim", type=int, default=128, help="their dimension after PCA (default 128)")
    ex.add_argument("--local-pca-from", help="a features file whose local PCA to reuse (queries and database, or "
                                            "training and test images, must share it)")
    ex.add_argument("--batch-size", type=int, default=8, help="images per forward pass (same-size images batch)")
    ex.add_argument("--workers", type=int, default=None, help="image decoding processes (default: cores - 1, at most 4)")
    ex.add_argument("--device", type=device_arg, default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    ex.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="trunk precision (auto: bfloat16 where the device computes it natively)")
    ex.add_argument("--chunk", type=int, default=64, help="images per saved chunk, the unit of resuming (default 64)")
    ex.set_defaults(run=run)


def run(args) -> int:
    with progress_bar("extract", unit="image") as cb:
        summary = extract_to_file(
            args.images, args.out, backbone=args.backbone, weights=args.weights, pooling=args.pooling,
            scales=args.scales, scale_p=args.scale_p, size=args.size, relu_plus_in_trunk=args.relu_plus_in_trunk,
            labels=args.labels, local=args.locals, max_local=args.max_local, local_dim=args.local_dim,
            local_pca_from=args.local_pca_from, gnd=args.gnd, batch_size=args.batch_size, workers=args.workers,
            device=args.device, dtype=args.dtype, chunk=args.chunk, progress=cb, report=echo)
    extra = f", {summary['local_descriptors']} local descriptors" if "local_descriptors" in summary else ""
    if "queries" in summary:
        extra += f" ({summary['extracted'] - summary['queries']} database images, {summary['queries']} query regions)"
    skipped = f"; {summary['unreadable']} unreadable file(s) skipped (named above)" if summary["unreadable"] else ""
    echo(f"wrote {summary['out']}: {summary['extracted']} of {summary['images']} images, "
         f"d={summary['dim']}{extra}{skipped}")
    return 0
