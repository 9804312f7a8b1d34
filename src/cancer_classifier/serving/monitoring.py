"""Prediction monitoring: one record per served prediction, and drift of recent traffic.

Each prediction appends one JSON line (time, model version, predicted class and probability,
in-distribution flag, and cheap input statistics: image size, mean and spread of intensities;
never the image) to a log shared by all gunicorn workers. Drift compares the last ``window``
records with the training images' reference (``input_reference.json``, written by the training
stage) as a population stability index (PSI) per statistic: about 0 when recent inputs look like
the training data, above 0.25 by convention when they clearly do not. The class mix is compared
the same way. Both appear on ``/metrics`` and on the ``/monitoring`` page.
"""

import fcntl
import io
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from cancer_classifier.entity import MonitoringConfig

# Keeps PSI finite when a bin is empty on one side.
PSI_EPSILON = 1e-4
# A rough upper bound of one record's size, to read only the log's tail.
RECORD_BYTES = 512


def psi(expected: np.ndarray, observed: np.ndarray) -> float:
    """Population stability index between two distributions over the same bins."""
    expected = np.clip(np.asarray(expected, dtype=float), PSI_EPSILON, None)
    observed = np.clip(np.asarray(observed, dtype=float), PSI_EPSILON, None)
    return float(np.sum((observed - expected) * np.log(observed / expected)))


def binned(values: list[float], edges: list[float]) -> np.ndarray:
    """Fractions of values in the bins the reference edges define (as training.input_reference does)."""
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)


class PredictionLog:
    """An append-only JSON-lines log, safe to share between worker processes."""

    def __init__(self, settings: MonitoringConfig) -> None:
        self.settings = settings
        self.path = Path(settings.log_file)

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with open(self.path, "a", encoding="utf-8") as file:
            fcntl.flock(file, fcntl.LOCK_EX)  # one writer at a time; released on close
            file.write(line)
            file.flush()
            if file.tell() > self.settings.max_log_bytes:
                os.replace(self.path, self.path.with_suffix(self.path.suffix + ".1"))

    def recent(self) -> list[dict]:
        """The last ``window`` records (fewer right after a start or a rotation)."""
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as file:
            file.seek(0, io.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - self.settings.window * RECORD_BYTES))
            lines = file.read().splitlines()
        if size > self.settings.window * RECORD_BYTES:
            lines = lines[1:]  # the first line may be cut
        records = []
        for line in lines[-self.settings.window:]:
            try:
                records.append(json.loads(line))
            except ValueError:  # a line being written right now
                continue
        return records


class DriftMonitor:
    """Records predictions and compares recent ones with the training data's reference."""

    def __init__(self, settings: MonitoringConfig) -> None:
        self.settings = settings
        self.log = PredictionLog(settings)

    def record(self, model_version: str, result: dict, statistics: dict[str, float]) -> None:
        self.log.append({
            "time": round(time.time(), 3),
            "model_version": model_version,
            "label": result["label"],
            "probability": round(result["probabilities"][result["label"]], 4),
            "in_distribution": result["in_distribution"],
            "statistics": statistics,
        })

    def summary(self, reference: dict | None) -> dict:
        """Drift per statistic and the class mix, recent against the served model's training reference,
        with the histograms behind them."""
        records = self.log.recent()
        summary = {"records": len(records), "window": self.settings.window,
                   "alert_psi": self.settings.drift_alert_psi, "reference": reference is not None}
        labels = Counter(record["label"] for record in records)
        summary["class_mix"] = {label: count / len(records) for label, count in labels.items()} if records else {}
        summary["out_of_distribution"] = (
            sum(record["in_distribution"] is False for record in records) / len(records) if records else None
        )
        if reference is None or not records:
            summary |= {"drift": {}, "histograms": {}, "class_mix_psi": None}
            return summary
        summary["histograms"], summary["drift"] = {}, {}
        for name, expected in reference["statistics"].items():
            values = [record["statistics"][name] for record in records if name in record.get("statistics", {})]
            if not values:
                continue
            recent = binned(values, expected["edges"])
            summary["histograms"][name] = {"edges": expected["edges"], "reference": expected["fractions"],
                                           "recent": recent.tolist()}
            summary["drift"][name] = round(psi(expected["fractions"], recent), 4)
        classes = list(reference["class_mix"])
        summary["reference_class_mix"] = reference["class_mix"]
        summary["class_mix_psi"] = round(psi(
            [reference["class_mix"][c] for c in classes], [summary["class_mix"].get(c, 0.0) for c in classes]
        ), 4)
        summary["drifted"] = sorted(name for name, value in summary["drift"].items()
                                    if value > self.settings.drift_alert_psi)
        return summary

    def exposition(self, reference: dict | None) -> bytes:
        """The drift gauges in Prometheus text format, computed from the shared log at scrape time."""
        registry = CollectorRegistry()
        registry.register(_DriftCollector(self.summary(reference)))
        return generate_latest(registry)


class _DriftCollector:
    def __init__(self, summary: dict) -> None:
        self.summary = summary

    def collect(self):
        summary = self.summary
        records = GaugeMetricFamily("monitored_predictions", "Recent predictions the drift figures are computed on.")
        records.add_metric([], summary["records"])
        drift = GaugeMetricFamily(
            "input_drift_psi", "Population stability index of recent inputs against the training images.",
            labels=["statistic"],
        )
        for name, value in summary["drift"].items():
            drift.add_metric([name], value)
        mix = GaugeMetricFamily("recent_class_fraction", "Share of each predicted class in recent predictions.",
                                labels=["label"])
        for label, value in summary["class_mix"].items():
            mix.add_metric([label], value)
        yield from (records, drift, mix)
        if summary["class_mix_psi"] is not None:
            mix_psi = GaugeMetricFamily("class_mix_psi", "PSI of the recent predicted class mix against training.")
            mix_psi.add_metric([], summary["class_mix_psi"])
            yield mix_psi


def drift_plot(summary: dict) -> str | None:
    """Reference against recent distributions, one panel per statistic plus the class mix, as a PNG data URL."""
    if not summary["histograms"]:
        return None
    import base64

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [*summary["histograms"].items(), ("predicted class", {
        "labels": list(summary["reference_class_mix"]),
        "reference": list(summary["reference_class_mix"].values()),
        "recent": [summary["class_mix"].get(c, 0.0) for c in summary["reference_class_mix"]],
    })]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
    for axis, (name, panel) in zip(axes[0], panels):
        positions = np.arange(len(panel["reference"]))
        axis.bar(positions - 0.2, panel["reference"], width=0.4, label="training")
        axis.bar(positions + 0.2, panel["recent"], width=0.4, label="recent")
        score = summary["drift"].get(name, summary["class_mix_psi"] if name == "predicted class" else None)
        axis.set_title(f"{name} (PSI {score:.2f})", fontsize=9)
        axis.set_xticks(positions, panel.get("labels", [f"{i + 1}" for i in positions]), fontsize=7)
        axis.set_xlabel("class" if "labels" in panel else "training decile bin", fontsize=8)
    axes[0][0].set_ylabel("share", fontsize=8)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
