"""Images on disk -> one features file that `pycsa eval`, `rerank` and `train` read.

Work is saved as it goes: every ``chunk`` images land in ``OUT.partial/`` (one .npz per chunk,
written atomically), so a killed run started again with the same settings redoes only the
chunk it was in. The final file is written atomically too, then the partial folder goes.

The file holds ``feats`` (N x D, L2-normalised), ``names`` (N, relative to the image folder),
``labels``/``label_names`` when asked, ``unreadable``/``unreadable_why`` (the files that
were skipped), ``extract_config`` (JSON) and, with local descriptors, ``local`` (M x d),
``offsets`` (N + 1), ``scale`` (M), ``positions`` (M x 2, x/y in the resized image's pixels
at scale 1) and the PCA they went through (``local_pca_mean``, ``local_pca_components``).
With a ground truth (``gnd``), ``database`` and ``queries`` in its order instead of ``feats``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .._checks import boolean, integer, optional_callable
from .._types import Device, DType, PathLike
from ..rerank.checkpoint import publish
from .backbones import build_backbone, torchvision_cache_file
from .extractor import MAX_PIXELS, SUPERGLOBAL_SCALES, GlobalExtractor, check_scales
from .pooling import _power
from .images import ImageFiles, collate_one, list_images

__all__ = ["extract_to_file", "read_labels", "LocalPCA"]

FORMAT = 1


class LocalPCA:
    """Mean-centred projection to ``dim`` dimensions, then L2 normalisation. Fitted by the
    covariance's eigenvectors, so any number of samples gives a full basis; each
    component's sign fixed (largest coordinate positive) so that refits agree."""

    def __init__(self, mean: np.ndarray, components: np.ndarray):
        self.mean, self.components = np.asarray(mean, np.float32), np.asarray(components, np.float32)

    @classmethod
    def fit(cls, x: np.ndarray, dim: int) -> "LocalPCA":
        x = np.asarray(x, np.float64)
        if x.shape[0] == 0:
            raise ValueError("local PCA: no local descriptors to fit it on")
        dim = min(dim, x.shape[1])
        mean = x.mean(0)
        cov = (x - mean).T @ (x - mean) / max(1, x.shape[0])
        vals, vecs = np.linalg.eigh(cov)
        comps = vecs[:, np.argsort(-vals, kind="stable")[:dim]].T
        sign = np.sign(comps[np.arange(dim), np.abs(comps).argmax(1)])
        return cls(mean, comps * sign[:, None])

    @classmethod
    def from_file(cls, path: PathLike) -> "LocalPCA":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["local_pca_mean"], z["local_pca_components"])
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"--local-pca-from: {path} holds no local PCA (local_pca_mean, "
                             f"local_pca_components): {exc}") from exc

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"local PCA: fitted on {self.mean.shape[0]}-d descriptors, got {x.shape[1]}-d")
        y = (x - self.mean) @ self.components.T
        return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def read_labels(spec: str | None, root: Path,
                names: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """(int64 labels, label names) for ``names``, or (None, None). ``spec``: 'folders' (the
    first folder under the image folder is the class), or a UTF-8 text file of 'name label' lines
    ('#' comments): split at the last tab, else the last comma, else the first space, so names
    may hold spaces when a tab or comma follows them. A name given two labels is refused."""
    if spec is None:
        return None, None
    if spec == "folders":
        odd = [n for n in names if os.path.isabs(n) or n.startswith("../") or n.startswith("./")]
        if odd:
            raise ValueError(f"--labels folders: needs image names relative to the image folder, got {odd[0]!r}; "
                             "list them relative to the list file's folder, or pass --labels FILE")
        cls = [n.split("/", 1)[0] if "/" in n else None for n in names]
        loose = [n for n, c in zip(names, cls) if c is None]
        if loose:
            raise ValueError(f"--labels folders: {len(loose)} image(s) are not inside a class folder of {root} "
                             f"(e.g. {loose[0]})")
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"--labels: no such file (or 'folders'): {spec}")
        try:
            # utf-8-sig: a byte-order mark (Windows editors write one) would otherwise stick to the first name
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValueError(f"--labels: {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
        table, first = {}, {}
        for ln, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            # a tab or comma separates the name from the label at its last occurrence, so names
            # with spaces can be labelled; without either, the first space does
            sep = "\t" if "\t" in line else "," if "," in line else None
            if sep:
                name, _, label = line.rpartition(sep)
                name, label = name.strip(), label.strip()
            else:
                name, _, label = line.partition(" ")
                label = " ".join(label.split())
            if not name or not label:
                raise ValueError(f"--labels: {path}:{ln}: expected 'name label', got {line!r}")
            if name in table and table[name] != label:
                raise ValueError(f"--labels: {path}:{ln}: {name!r} is labelled {label!r} here but {table[name]!r} "
                                 f"on line {first[name]}")
            table[name] = label
            first.setdefault(name, ln)
        cls = [table.get(n) for n in names]
        unknown = [n for n, c in zip(names, cls) if c is None]
        if unknown:
            raise ValueError(f"--labels: {path} has no label for {len(unknown)} of the {len(names)} images "
                             f"(e.g. {unknown[0]})")
    label_names = sorted(set(cls))
    lookup = {c: i for i, c in enumerate(label_names)}
    return np.array([lookup[c] for c in cls], dtype=np.int64), np.array(label_names)


def _atomic_savez(path: Path, **arrays) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp.npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        publish(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_digest(path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def extract_to_file(images: PathLike, out: PathLike, *, backbone: str = "resnet50", weights: PathLike | None = None,
                    pooling: str = "superglobal", scales: Sequence[float] = SUPERGLOBAL_SCALES,
                    scale_p: float = float("inf"), size: int = 1024, relu_plus_in_trunk: bool = False,
                    labels: str | None = None, local: bool = False, max_local: int = 500, local_dim: int = 128,
                    local_pca_from: PathLike | None = None, gnd: PathLike | None = None, batch_size: int = 8,
                    workers: int | None = None, device: Device = None, dtype: DType = "auto", chunk: int = 64,
                    progress: Callable[[int, int], None] | None = None, report: Callable[[str], None] = print) -> dict:
    """Extracts every image of a folder (or list file) into ``out`` (.npz); see the module
    docstring for its contents. Returns a summary: counts, the file, what was resumed.

    ``gnd``: a Revisited Oxford/Paris ground truth (gnd_*.pkl); ``images`` is then the folder
    of its images, and the file holds ``database`` (imlist order) and ``queries`` (qimlist
    order, cropped to their boxes), ready for ``pycsa eval --gnd``. No image may be missing."""
    out = Path(os.fspath(out))
    if out.suffix != ".npz":
        raise ValueError(f"--out: must end in .npz, got {out}")
    if out.exists() and out.is_dir():
        raise ValueError(f"--out: {out} is a folder")
    size = integer(size, "--size", low=32)
    batch_size, chunk = integer(batch_size, "--batch-size", low=1), integer(chunk, "chunk", low=1)
    max_local, local_dim = integer(max_local, "--max-local", low=1), integer(local_dim, "--local-dim", low=1)
    # every argument is checked before anything is created: a refusal leaves no OUT.partial/ behind
    scales = check_scales(scales, "--scales")
    scale_p = _power(scale_p, "--scale-p", allow_inf=True)
    local = boolean(local, "--locals")  # "no" would be truthy and turn local descriptors on
    relu_plus_in_trunk = boolean(relu_plus_in_trunk, "--relu-plus-in-trunk")
    if workers is not None:
        workers = integer(workers, "--workers", low=0)
    optional_callable(progress, "progress")
    if not callable(report):
        raise TypeError(f"report: expected a callable, got {report!r} ({type(report).__name__})")
    # images are at most size x size (longest side brought to size), so this bounds every image
    side = int(size * max(scales))
    if side * side > MAX_PIXELS:
        raise ValueError(f"--size: {size} at scale {max(scales):g} makes images of up to {side} x {side} pixels, "
                         f"more than the budget of {MAX_PIXELS} per image; lower --size or --scales")
    boxes, num_db = None, None
    if gnd is not None:
        if labels is not None:
            raise ValueError("--labels: not with --gnd (the ground truth says which images match)")
        if local:
            raise ValueError("--locals: not with --gnd yet; extract the database's and the queries' local "
                             "descriptors with two list files (--images LIST) sharing one --local-pca-from")
        root, names, boxes, num_db = _gnd_items(images, gnd)
    else:
        root, names = list_images(images)
    label_ids, label_names = read_labels(labels, root, names)
    out.parent.mkdir(parents=True, exist_ok=True)

    if weights is None or weights == "cache":  # resolved here, so that the file used is recorded
        weights = torchvision_cache_file(backbone) or weights
    trunk, projection = build_backbone(backbone, weights, relu_plus=0.014 if relu_plus_in_trunk else 0.0)
    # LocalPCA.fit would clamp a larger --local-dim to the map's channels while the config
    # recorded the number asked for: refused instead
    if local and local_pca_from is None and local_dim > trunk.out_channels:
        raise ValueError(f"--local-dim: must be at most {trunk.out_channels}, the dimension of {backbone}'s local "
                         f"descriptors (before PCA), got {local_dim}")
    extractor = GlobalExtractor(trunk, pooling, scales, scale_p, projection, device=device, dtype=dtype)
    pca = LocalPCA.from_file(local_pca_from) if (local and local_pca_from is not None) else None
    config = {"format": FORMAT, "backbone": backbone,
              "weights": "random" if weights == "random" else (None if weights is None else Path(weights).name),
              "weights_sha1": _file_digest(weights) if weights not in (None, "random", "cache") else weights,
              "root": str(Path(root).resolve()),
              "pooling": pooling, "scales": list(extractor.scales), "scale_p": extractor.combine.p, "size": size,
              "relu_plus_in_trunk": bool(relu_plus_in_trunk), "dtype": str(extractor.dtype).replace("torch.", ""),
              "local": bool(local), "max_local": max_local if local else None, "local_dim": local_dim if local else None,
              "local_pca_from": None if local_pca_from is None else str(local_pca_from), "chunk": chunk,
              "images": hashlib.sha1(("\n".join(names) + repr(boxes)).encode()).hexdigest(), "count": len(names),
              "gnd_queries": None if gnd is None else len(names) - num_db}

    partial = out.with_name(out.name + ".partial")
    done = _open_partial(partial, config, report)
    if local and pca is None and (partial / "pca.npz").is_file():
        pca = LocalPCA.from_file(partial / "pca.npz")
    chunks = [list(range(s, min(s + chunk, len(names)))) for s in range(0, len(names), chunk)]
    todo = [c for c in range(len(chunks)) if c not in done]
    done_images = sum(len(chunks[c]) for c in done)
    if done:
        report(f"resuming {partial}: {done_images} of {len(names)} images already extracted")

    if workers is None:  # given values were checked on entry
        workers = min(4, max(0, (os.cpu_count() or 1) - 1))
    todo_images = [i for c in todo for i in chunks[c]]
    dataset = ImageFiles(root, names, todo_images, size, boxes)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=collate_one, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    stream = iter(loader)
    if progress:
        progress(done_images, len(names))
    for c in todo:
        result = _run_chunk(extractor, stream, len(chunks[c]), batch_size, max_local if local else 0)
        if local:
            raw = result.pop("local_raw")
            raw = np.concatenate(raw) if raw else None
            if pca is None and raw is not None and raw.shape[0]:
                # the first chunk that has descriptors (64 images by default) fits the PCA
                pca = LocalPCA.fit(raw, local_dim)
                _atomic_savez(partial / "pca.npz", local_pca_mean=pca.mean, local_pca_components=pca.components)
            dim = local_dim if pca is None else pca.components.shape[0]
            result["local"] = pca(raw) if raw is not None and raw.shape[0] else np.zeros((0, dim), np.float32)
        for i, why in zip(result["failed"], result["failed_why"]):
            report(f"skipped unreadable {names[i]}: {why}")
        _atomic_savez(partial / f"chunk_{c:06d}.npz", **{k: np.asarray(v) for k, v in result.items()})
        done_images += len(chunks[c])
        if progress:
            progress(done_images, len(names))
    return _assemble(out, partial, chunks, names, label_ids, label_names, config, pca, report, num_db)


def _gnd_items(images, gnd_path):
    """(root, names, boxes, database size): the ground truth's database images in its order,
    then its queries cropped to their boxes, as the Revisited Oxford/Paris protocol has it."""
    from ..datasets import load_gnd

    root = Path(os.fspath(images))
    if not root.is_dir():
        raise FileNotFoundError(f"--images: with --gnd, the folder of the ground truth's images; no such folder: {root}")
    gnd = load_gnd(gnd_path)

    def find(name):
        for candidate in (name, *(name + ext for ext in (".jpg", ".jpeg", ".png"))):
            if (root / candidate).is_file():
                return candidate
        return name + ".jpg"  # reported as unreadable, by this name

    db = [find(n) for n in gnd["imlist"]]
    queries = [find(n) for n in gnd["qimlist"]]
    boxes = [None] * len(db) + [entry.get("bbx") for entry in gnd["gnd"]]
    return root, db + queries, boxes, len(db)


def _open_partial(partial: Path, config: dict, report) -> set:
    """The chunks an interrupted run with the same settings finished; a fresh folder otherwise."""
    meta = partial / "meta.json"
    if partial.is_dir() and meta.is_file():
        try:
            old = json.loads(meta.read_text())
        except (OSError, ValueError):
            old = None
        if old != config:
            if isinstance(old, dict):
                diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                why = f"other settings ({', '.join(diff)} differ)"
            else:
                why = "an unreadable meta.json"
            raise ValueError(f"--out: {partial} holds an interrupted run with {why}: run again with the same "
                             f"settings to resume it, or remove {partial}")
        done = set()
        for f in partial.glob("chunk_*.npz"):
            try:
                with np.load(f, allow_pickle=False) as z:
                    z["feats"]  # a chunk cut short by a kill is rewritten, never trusted
                    retry = z["failed"].size > 0
                if retry:  # its unreadable files may have been fixed since
                    f.unlink()
                    continue
                done.add(int(f.stem.split("_")[1]))
            except Exception:  # noqa: BLE001
                report(f"redoing {f.name}: it cannot be read")
                f.unlink(missing_ok=True)
        return done
    shutil.rmtree(partial, ignore_errors=True)  # without its meta.json nothing in it can be trusted
    partial.mkdir(parents=True, exist_ok=True)
    tmp = meta.with_suffix(".tmp")
    tmp.write_text(json.dumps(config))
    os.replace(tmp, meta)
    return set()


def _run_chunk(extractor: GlobalExtractor, stream, count: int, batch_size: int, max_local: int) -> dict:
    idx, feats, failed, failed_why = [], [], [], []
    local_raw, counts, scale, positions = [], [], [], []
    pending = []

    def flush():
        # images of one size go through the trunk together; sizes differ when aspect ratios do
        groups: dict = {}
        for i, img in pending:
            groups.setdefault(tuple(img.shape), []).append((i, img))
        for group in groups.values():
            batch = torch.stack([img for _, img in group])
            glob, loc = extractor.extract(batch, max_local)
            for b, (i, _) in enumerate(group):
                idx.append(i)
                feats.append(glob[b].numpy())
                if loc is not None:
                    local_raw.append(loc.descriptors[b].numpy())
                    counts.append(loc.descriptors[b].shape[0])
                    scale.append(loc.scales[b].numpy())
                    positions.append(loc.positions[b].numpy())
        pending.clear()

    for _ in range(count):
        i, img, why = next(stream)
        if img is None:
            failed.append(i)
            failed_why.append(why)
        else:
            pending.append((i, img))
        if len(pending) >= batch_size:
            flush()
    flush()
    order = np.argsort(np.asarray(idx, dtype=np.int64), kind="stable")
    result = {"idx": np.asarray(idx, dtype=np.int64)[order],
              "feats": np.stack(feats)[order].astype(np.float32) if feats else np.zeros((0, 0), np.float32),
              "failed": np.asarray(failed, dtype=np.int64), "failed_why": np.asarray(failed_why, dtype=str)}
    if max_local:
        result["local_raw"] = [local_raw[j] for j in order]
        result["counts"] = np.asarray(counts, dtype=np.int64)[order]
        result["scale"] = np.concatenate([scale[j] for j in order]) if scale else np.zeros(0, np.int64)
        result["positions"] = np.concatenate([positions[j] for j in order]) if positions else np.zeros((0, 2), np.float32)
    return result


def _assemble(out: Path, partial: Path, chunks, names, label_ids, label_names, config, pca, report,
              num_db=None) -> dict:
    parts = []
    for c in range(len(chunks)):
        with np.load(partial / f"chunk_{c:06d}.npz", allow_pickle=False) as z:
            parts.append({k: z[k] for k in z.files})
    idx = np.concatenate([p["idx"] for p in parts])
    failed = np.concatenate([p["failed"] for p in parts])
    failed_why = np.concatenate([p["failed_why"] for p in parts]) if failed.size else np.zeros(0, dtype=str)
    if idx.size == 0:
        raise ValueError(f"--images: none of the {len(names)} files could be read (e.g. {names[failed[0]]}: "
                         f"{failed_why[0]})")
    if num_db is not None and failed.size:
        listed = ", ".join(f"{names[i]} ({why})" for i, why in zip(failed[:5], failed_why[:5]))
        raise ValueError(f"--gnd: {failed.size} image(s) of the ground truth cannot be read, and none may be "
                         f"skipped: {listed}. Fix them and run the same command again: the rest is kept in {partial}")
    feats = np.concatenate([p["feats"] for p in parts if p["feats"].shape[0]])
    if num_db is not None:  # the Revisited layout: the database in imlist order, the queries in qimlist order
        arrays = {"database": feats[:num_db], "queries": feats[num_db:], "names": np.asarray(names[:num_db]),
                  "query_names": np.asarray(names[num_db:]), "extract_config": np.asarray(json.dumps(config))}
        _atomic_savez(out, **arrays)
        shutil.rmtree(partial, ignore_errors=True)
        return {"out": str(out), "images": len(names), "extracted": int(idx.size), "unreadable": 0,
                "dim": int(feats.shape[1]), "queries": len(names) - num_db}
    arrays = {"feats": feats, "names": np.asarray([names[i] for i in idx]),
              "unreadable": np.asarray([names[i] for i in failed], dtype=str), "unreadable_why": failed_why,
              "extract_config": np.asarray(json.dumps(config))}
    if label_ids is not None:
        arrays["labels"], arrays["label_names"] = label_ids[idx], label_names
    if config["local"]:
        counts = np.concatenate([p["counts"] for p in parts])
        arrays.update(local=np.concatenate([p["local"] for p in parts]),
                      offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                      scale=np.concatenate([p["scale"] for p in parts]).astype(np.int64),
                      positions=np.concatenate([p["positions"] for p in parts]).astype(np.float32),
                      local_pca_mean=pca.mean, local_pca_components=pca.components)
    _atomic_savez(out, **arrays)
    shutil.rmtree(partial, ignore_errors=True)
    summary = {"out": str(out), "images": len(names), "extracted": int(idx.size), "unreadable": int(failed.size),
               "dim": int(feats.shape[1])}
    if config["local"]:
        summary["local_descriptors"] = int(arrays["local"].shape[0])
    return summary
