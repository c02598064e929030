"""What the commands print and draw: progress lines or bars, tables, plots."""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

__all__ = ["progress_bar", "echo", "format_table", "pct", "plot_bars", "plot_training", "device_arg"]


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
            bars = ax.bar(xs, vals, width * 0.92, label=m, color=cmap(i % 10))
            ax.bar_label(bars, labels=[f"{v:.1f}" for v in vals], padding=2, fontsize=7)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([g.capitalize() for g in groups])
        ax.set_xlabel("protocol")
        ax.legend(title="method", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:  # one bar per method, named on the axis
        vals = [r["mAP"] for r in rows]
        fig, ax = plt.subplots(figsize=(max(6.0, 1.5 + 1.0 * len(methods)), 4.8), dpi=120)
        bars = ax.bar(range(len(methods)), vals, 0.7, color=[cmap(i % 10) for i in range(len(methods))])
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in vals], padding=2, fontsize=9)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=20 if len(methods) > 6 else 0, ha="right" if len(methods) > 6 else "center")
        ax.set_xlabel("method ('cosine' = initial search, no re-ranking)")
        value = dict(enumerate(vals))
    ax.set_ylabel("mAP (%)")
    top = max(value.values()) if value else 100.0
    ax.set_ylim(0, top * 1.12 + 3 if top > 0 else 1.0)  # room for the value labels
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


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
