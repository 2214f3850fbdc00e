"""Peak RSS of the worker: its Python process, its JVM child and Spark's Python workers."""

from __future__ import annotations

import threading
import time

import psutil


def classify(process: psutil.Process) -> str:
    """'jvm', 'python_workers' (pyspark daemons) or 'other', for a child of the worker."""
    try:
        name = process.name()
        cmdline = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "other"
    if name == "java" or "org.apache.spark" in cmdline:
        return "jvm"
    if "pyspark" in cmdline or name.startswith("python"):
        return "python_workers"
    return "other"


class RssSampler:
    """Samples the RSS of a process tree every ``every`` seconds on a thread, keeping peaks
    per part and the time series (for the plot)."""

    PARTS = ("python", "jvm", "python_workers", "other")

    def __init__(self, pid: int, every: float = 0.25, label: str = "") -> None:
        self.root = psutil.Process(pid)
        self.every = every
        self.label = label
        self.peaks = dict.fromkeys(self.PARTS, 0)
        self.peak_total = 0
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._started = time.monotonic()

    def _sample(self) -> dict[str, int] | None:
        try:
            parts = dict.fromkeys(self.PARTS, 0)
            parts["python"] = self.root.memory_info().rss
            for child in self.root.children(recursive=True):
                try:
                    parts[classify(child)] += child.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            return parts
        except psutil.NoSuchProcess:
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            parts = self._sample()
            if parts is None:
                return
            total = sum(parts.values())
            for name, value in parts.items():
                self.peaks[name] = max(self.peaks[name], value)
            self.peak_total = max(self.peak_total, total)
            self.samples.append({"t_s": round(time.monotonic() - self._started, 2), **parts})
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def figures(self) -> dict:
        return {"label": self.label, "peak_bytes": dict(self.peaks),
                "peak_total_bytes": self.peak_total, "samples": len(self.samples)}
