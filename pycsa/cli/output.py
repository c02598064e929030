"""What the commands print and draw: progress lines or bars, tables, plots."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
from tqdm.auto import tqdm

__all__ = ["progress_bar", "echo", "format_table", "pct", "plot_bars", "plot_training", "device_arg", "int_arg",
           "float_arg", "output_path", "plot_path", "written", "write_json", "json_safe", "cell"]


def _plural(unit: str) -> str:
    if unit.endswith("y"):
        return unit[:-1] + "ies"
    return unit + ("es" if unit.endswith(("s", "ch", "sh", "x")) else "s")


class _LogProgress:
    """Progress for a stream that is not a terminal (a log file, CI): one line at most every
    ``every`` seconds and one at the end, instead of a bar's carriage-return redraws.
    Silent when the work ends within ``delay`` seconds, as the bar is."""

    def __init__(self, desc: str, unit: str, stream, every: float = 10.0, delay: float = 1.0):
        self.desc, self.unit, self.stream, self.every = desc, unit, stream, every
        self.start = time.monotonic()
        self.next = self.start + delay
        self.done = self.total = 0
        self.printed = False

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        now = time.monotonic()
        if now >= self.next and done < total:
            self._line(now)
            self.next = now + self.every

    def close(self) -> None:
        if self.printed:  # only work that was long enough to report gets a closing line
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        print(f"{self.desc}: {self.done}/{self.total} {_plural(self.unit)}{share}, {now - self.start:.1f} s",
              file=self.stream, flush=True)
        self.printed = True


@contextmanager
def progress_bar(desc: str, unit: str = "query", stream=None):
    """A progress callback (done, total): a tqdm bar on a terminal, a line every 10 s
    otherwise; silent when the work is instant."""
    stream = sys.stderr if stream is None else stream
    if not stream.isatty():
        log = _LogProgress(desc, unit, stream)
        try:
            yield log.update
        finally:
            log.close()
        return
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit=unit, leave=False, delay=1.0, file=stream)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def echo(text: str) -> None:
    """A line on stdout that does not break a progress bar drawn on the terminal."""
    tqdm.write(text, file=sys.stdout)


def format_table(rows: list[dict], columns: list[str]) -> str:
    cells = [[str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def pct(x: float) -> float:
    return round(100.0 * float(x), 2)


def plot_bars(rows: list[dict], mode: str, title: str, out: str) -> None:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("--plot needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    cmap = plt.get_cmap("tab10")
    if mode == "revisited":  # one group of bars per protocol, one colour per method
        groups = ["easy", "medium", "hard"]
        value = {(r["method"], r["protocol"]): r["mAP"] for r in rows}
        width = 0.8 / len(methods)
        fig, ax = plt.subplots(figsize=(max(7.0, 1.5 + 0.55 * len(methods) * len(groups)), 5.0), dpi=120)
        for i, m in enumerate(methods):
            xs = [g + (i - (len(methods) - 1) / 2) * width for g in range(len(groups))]
            vals = [value[(m, g)] for g in groups]
            bars = ax.bar(xs, _zero_nan(vals), width * 0.92, label=m, color=cmap(i % 10))
            ax.bar_label(bars, labels=[_bar_label(v) for v in vals], padding=2, fontsize=7)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([g.capitalize() for g in groups])
        ax.set_xlabel("protocol")
        ax.legend(title="method", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:  # one bar per method, named on the axis
        vals = [r["mAP"] for r in rows]
        fig, ax = plt.subplots(figsize=(max(6.0, 1.5 + 1.0 * len(methods)), 4.8), dpi=120)
        bars = ax.bar(range(len(methods)), _zero_nan(vals), 0.7, color=[cmap(i % 10) for i in range(len(methods))])
        ax.bar_label(bars, labels=[_bar_label(v) for v in vals], padding=2, fontsize=9)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=20 if len(methods) > 6 else 0, ha="right" if len(methods) > 6 else "center")
        ax.set_xlabel("method ('cosine' = initial search, no re-ranking)")
        value = dict(enumerate(vals))
    ax.set_ylabel("mAP (%)")
    top = max(_zero_nan(value.values()), default=100.0)
    ax.set_ylim(0, top * 1.12 + 3 if top > 0 else 1.0)  # room for the value labels
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _zero_nan(vals) -> list:
    # a protocol with no positives scores NaN: no bar, and no NaN in the axis limits
    return [0.0 if math.isnan(v) else v for v in vals]


def _bar_label(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.1f}"


def plot_training(history: list, title: str, out: str) -> None:
    """Loss per epoch (left axis) and validation mAP (right axis, when measured)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("--plot needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=120)
    ax.plot(epochs, [h["loss"] for h in history], "o-", color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("training loss", color="tab:blue")
    ax.grid(alpha=0.3)
    handles = ax.get_lines()
    if any(h.get("val_map") is not None for h in history):
        ax2 = ax.twinx()
        pts = [(h["epoch"], 100 * h["val_map"]) for h in history if h.get("val_map") is not None]
        ax2.plot(*zip(*pts), "s-", color="tab:orange", label="validation mAP")
        ax2.set_ylabel("validation mAP (%)", color="tab:orange")
        handles = handles + ax2.get_lines()
    ax.legend(handles, [h.get_label() for h in handles], loc="center right", frameon=False)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def device_arg(text: str) -> str:
    """--device: a device torch knows and this machine has (argparse reports the error)."""
    try:
        dev = torch.device(text)
    except RuntimeError as exc:
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (cpu, cuda, cuda:1)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: this torch has no CUDA device (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text}: pycsa runs on cpu or cuda")
    return text


# --------------------------------------------------------------------------- option types and output files


def int_arg(low: int = 1):
    """An argparse type: an int >= ``low``. Checked at parsing, so that the error names the
    option as typed (--k), not the library argument it becomes (k), and comes before any work."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(
                f"must be {'a positive integer' if low == 1 else f'an integer >= {low}'}, got {value}")
        return value
    return parse


def float_arg(low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False):
    """An argparse type: a finite float in [low, high] (either end open on request)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or below or above:
            lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
            hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
            want = " and ".join(b for b in (lo, hi) if b)
            raise argparse.ArgumentTypeError(f"must be a finite number{' ' + want if want else ''}, got {text}")
        return value
    return parse


def output_path(path, option: str, suffix: str | None = None) -> str:
    """Checks an output file before the work that fills it: not a folder, its folder made
    (parents too) and writable. With ``suffix``, the name the writer will really use: numpy
    and matplotlib append one (.npz, .png) to a name without it. Returns that name."""
    path = os.fspath(path)
    if suffix is not None and not path.endswith(suffix) and (suffix == ".npz" or not Path(path).suffix):
        path += suffix
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{option}: {path} is a directory; name a file (in it, if you like)")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        # a real probe: os.access says yes to root on a read-only file system
        with tempfile.TemporaryFile(dir=p.parent):
            pass
    except OSError as exc:
        raise ValueError(f"{option}: cannot write {path}: {exc.strerror or exc}") from None
    return path


def plot_path(path, option: str = "--plot") -> str:
    """output_path for a figure: matplotlib present, and a file type it writes (.png when
    the name has none, as matplotlib would), checked before the work it draws."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError as exc:
        raise ImportError(f"{option} needs matplotlib: pip install matplotlib") from exc
    path = os.fspath(path)
    ext = Path(path).suffix[1:].lower() or "png"
    kinds = FigureCanvasAgg.get_supported_filetypes()
    if ext not in kinds:
        raise ValueError(f"{option}: matplotlib cannot write .{ext} files; use one of {', '.join(sorted(kinds))}")
    return output_path(path, option, ".png")


@contextmanager
def written(path):
    """A temporary file next to ``path`` (same suffix, for writers that go by it) that takes
    its place when the block ends without error and is removed when it does not, so that a
    failed write leaves neither a half file nor a stray temporary one."""
    from pycsa.rerank.checkpoint import publish

    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp" + p.suffix, dir=p.parent)
    os.close(fd)
    try:
        yield tmp
        publish(tmp)
        os.replace(tmp, p)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def json_safe(obj):
    """NaN and infinities as None: they are no JSON (json writes bare NaN tokens that strict
    readers refuse); a NaN score means the protocol had nothing to score."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path, obj) -> None:
    text = json.dumps(json_safe(obj), indent=2, allow_nan=False)
    with written(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def cell(value, fmt: str = ".2f") -> str:
    """A table cell: a score, or 'n/a' where there was nothing to score (NaN)."""
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else format(value, fmt)
    return str(value)
