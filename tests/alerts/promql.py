"""What PromQL expressions read, and what a scrape exposes: the alerts' and the dashboards' tests check
the one against the other."""

from __future__ import annotations

import re
from collections.abc import Sequence

from prometheus_client.parser import text_string_to_metric_families

# Labels the chart's PodMonitor gives every series (Prometheus adds job and instance, the Prometheus
# Operator namespace and pod; the relabeling adds pool), and the histogram buckets' own.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "pool", "le"}

Exposure = tuple[set[str], dict[str, set[str]]]


def names_and_labels(expr: str) -> tuple[set[str], set[str]]:
    """The metric names an expression reads and the label names it matches on (=, !=, =~, !~) or
    groups by (by, without, on, ignoring, group_left, group_right)."""
    metrics = set(re.findall(r"\bo1_[a-z0-9_]+", expr))
    labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"", expr))
    for group in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    return metrics, labels


def exposed(text: str) -> Exposure:
    """The sample names a scrape exposes (those of families with no samples yet too), and the label
    names each sample name was seen with."""
    families = list(text_string_to_metric_families(text))
    samples: dict[str, set[str]] = {}
    for family in families:
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    names = set(samples) | {name for family in families for name in _sample_names(family.name, family.type)}
    return names, samples


def merged(*exposures: Exposure) -> Exposure:
    """Several scrapes (of several sidecars) as one."""
    names: set[str] = set()
    samples: dict[str, set[str]] = {}
    for more_names, more_samples in exposures:
        names |= more_names
        for name, labels in more_samples.items():
            samples.setdefault(name, set()).update(labels)
    return names, samples


def _sample_names(name: str, kind: str) -> Sequence[str]:
    """The sample names a family exposes, samples or not (a labelled counter with no children yet)."""
    if kind == "counter":
        return (name + "_total",)
    if kind == "histogram":
        return tuple(name + suffix for suffix in ("_bucket", "_count", "_sum"))
    return (name,)
