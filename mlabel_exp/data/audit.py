"""Data audit: class counts, unlabeled images, label cardinality, grayscale images, image sizes, class co-occurrence
and every problem found in one pass (grouped by kind, with counts, examples and the setting that skips or fixes each;
those that hurt training first: a class the split leaves without a training or validation positive, or with few),
read from an index before any training. Images with no label are background (all-negative samples): a count, not a
problem."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mlabel_exp.data.formats import index_from_config, resolve_data_root
from mlabel_exp.data.formats.folder import build_index
from mlabel_exp.data.images import open_image
from mlabel_exp.data.index import DatasetIndex, Problem

EXAMPLES = 3  # examples shown per kind of problem
#: A class with fewer positives than this in a split is listed: its AP there swings with one image (on validation),
#: and the model sees it too rarely to learn it (in training).
FEW_POSITIVES = 10
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


@dataclass
class Audit:
    summary: dict
    per_class: "object"       # pandas DataFrame: class, images (positives), share, unknown (when any)
    cooccurrence: "object"    # pandas DataFrame: classes x classes, images holding both
    image_sizes: Counter
    image_modes: Counter
    findings: list[Problem] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Each finding as one line: where it is, then what."""
        return [f"{p.where}: {p.message}" if p.where else p.message for p in self.findings]

    def grouped(self) -> dict[str, list[Problem]]:
        """Findings by kind, in the order each kind was first found."""
        groups: dict[str, list[Problem]] = {}
        for p in self.findings:
            groups.setdefault(p.kind, []).append(p)
        return groups

    def problems_text(self) -> list[str]:
        groups = self.grouped()
        lines = [f"Problems ({len(self.findings)} in {len(groups)} kind(s)), those that hurt training first"]
        for kind, found in groups.items():
            lines.append(f"  {kind}: {len(found)}" + (f"  -> {found[0].fix}" if found[0].fix else ""))
            lines += [f"    - {p.where + ': ' if p.where else ''}{p.message}" for p in found[:EXAMPLES]]
            if len(found) > EXAMPLES:
                lines.append(f"    ... and {len(found) - EXAMPLES} more")
        return lines if groups else lines + ["  none"]

    def to_text(self, top_sizes: int = 5) -> str:
        lines = ["Data set audit", "=============="]
        lines += [f"{k:<28} {v}" for k, v in self.summary.items()]
        lines += ["", "Images per class (positives)", self.per_class.to_string(index=False),
                  "", "Co-occurrence (images holding both classes)", self.cooccurrence.to_string(),
                  "", "Image sizes (width x height: images)"]
        lines += [f"  {w}x{h}: {n}" for (w, h), n in self.image_sizes.most_common(top_sizes)]
        lines += ["", "Image modes: " + ", ".join(f"{m}: {n}" for m, n in self.image_modes.most_common())]
        return "\n".join(lines + [""] + self.problems_text())


def _image_findings(index: DatasetIndex, decode: bool) -> tuple[Counter, Counter, list[Problem]]:
    sizes: Counter = Counter()
    modes: Counter = Counter()
    found = []
    for path in index.paths():
        try:
            with open_image(path) as im:  # the loader's guard: an image it would refuse is a finding
                sizes[im.size] += 1
                modes[im.mode] += 1
                if decode:
                    im.load()
        except Exception as e:  # any unreadable file is a finding, not a crash
            found.append(Problem("unreadable image", f"unreadable image ({type(e).__name__}: {e})", str(path),
                                 "replace or delete the file (a run skips unreadable images)"))
    return sizes, modes, found


def label_findings(classes: list[str], labels: np.ndarray) -> list[Problem]:
    """Class names that differ only by case or spaces ('Cat', 'cat'; 'red  car', 'red car') and classes without a
    positive. Such names are reported, not merged: they may be two classes of the user's. Images in no class are
    background images (all-negative samples), not a problem: the summary counts them."""
    found = []
    by_key: dict[str, list[str]] = {}
    for c in classes:
        by_key.setdefault(" ".join(c.split()).casefold(), []).append(c)
    for names in by_key.values():
        if len(names) > 1:
            found.append(Problem("class names differing only by case or spaces", " and ".join(map(repr, names)), "",
                                 "they are read as different classes; if they are one, write them alike in the "
                                 "annotations, else give them distinct names"))
    positives = (labels == 1).sum(0)
    for c, n in zip(classes, positives):
        if n == 0:
            found.append(Problem("class without any positive", f"class {c!r} has no positive image", "",
                                 "annotate some images, or remove the class (its AP is undefined)"))
    return found


def split_findings(classes: list[str], labels: np.ndarray, split: dict) -> list[Problem]:
    """What the split does to each class with a positive at all: no positive in a part (training: the model cannot
    learn the class; validation or test: its AP is undefined, and it is left out of mAP and every macro average), or
    fewer than FEW_POSITIVES there."""
    total = (labels == 1).sum(0)
    counts = {part: (labels[np.asarray(rows, dtype=int)] == 1).sum(0) for part, rows in split.items() if len(rows)}
    other = " (or another data.split_seed; a data.split_file or data.folds decides it instead where set)"
    fix = {"train": "the model cannot learn it: annotate more images of it, or lower data.val_fraction" + other,
           "val": "its AP is undefined, so it is left out of val mAP and every macro average: annotate more images "
                  "of it, or raise data.val_fraction" + other,
           "test": "it is left out of the test figures: annotate more images of it, or raise data.test_fraction" +
                   other}
    found = []
    for part, n in counts.items():
        name = SPLIT_NAMES.get(part, part)
        found += [Problem(f"class with no {name} positive", f"class {c!r}: 0 of its {int(t)} positive images are in "
                          f"the {name} split ({len(split[part])} images)", "", fix.get(part, ""))
                  for c, k, t in zip(classes, n, total) if k == 0 and t > 0]
    few = [(c, {part: int(n[j]) for part, n in counts.items()}) for j, c in enumerate(classes)
           if total[j] > 0 and any(0 < n[j] < FEW_POSITIVES for n in counts.values())]
    found += [Problem(f"class with fewer than {FEW_POSITIVES} positives in a split", f"class {c!r}: " + ", ".join(
        f"{k} {SPLIT_NAMES.get(part, part)}" for part, k in per.items()) + " positives", "",
        "a validation AP on so few positives swings with one image, and training sees the class rarely: annotate "
        "more images of it") for c, per in few]
    return found


def audit(index: DatasetIndex, decode: bool = False, reader_findings: list[Problem] | None = None,
          split: dict | None = None) -> Audit:
    """Audit an index. Reads each image header (mode, size); ``decode`` also decodes every pixel,
    which finds truncated files at the cost of a full pass over the data. ``reader_findings``: what a reader in
    collecting mode found (else the index's own problems, as found). ``split`` (part -> rows): what it leaves each
    class, listed first, and each class's positives per part in the table."""
    import pandas as pd

    found = label_findings(index.classes, index.labels)
    found = [p for p in found if p.kind == "class without any positive"] + \
        (split_findings(index.classes, index.labels, split) if split else []) + \
        [p for p in found if p.kind != "class without any positive"]
    found += list(reader_findings) if reader_findings is not None else \
        [Problem("reader finding", p) for p in index.problems]
    sizes, modes, unreadable = _image_findings(index, decode)
    found += unreadable
    known = index.labels.astype(np.int64)
    positive = (known == 1).astype(np.int64)
    n = len(index)
    counts = positive.sum(0)
    per_image = positive.sum(1)
    per_class = pd.DataFrame({"class": index.classes, "images": counts, "share": np.round(counts / max(n, 1), 4)})
    for part, rows in (split or {}).items():
        if len(rows):
            per_class[part] = positive[np.asarray(rows, dtype=int)].sum(0)
    unknown = (known == -1).sum(0)
    if unknown.any():
        per_class["unknown"] = unknown
    co = pd.DataFrame(positive.T @ positive, index=index.classes, columns=index.classes)
    grayscale = sum(v for m, v in modes.items() if m in ("L", "LA", "1", "I", "I;16", "F"))
    summary = {
        "root": str(index.root),
        "images": n,
        "classes": len(index.classes),
        "images with no label": f"{int((per_image == 0).sum())} ({(per_image == 0).mean():.1%}; background: "
                                "all-negative samples, not a problem)" if n else "0",
        "label cardinality (mean)": round(float(per_image.mean()), 3) if n else 0.0,
        "labels per image (max)": int(per_image.max()) if n else 0,
        "grayscale images": grayscale,
        "rarest class": f"{index.classes[int(counts.argmin())]} ({int(counts.min())})",
        "most frequent class": f"{index.classes[int(counts.argmax())]} ({int(counts.max())})",
    }
    if unknown.any():
        summary["unknown labels"] = f"{int(unknown.sum())} ({unknown.sum() / max(known.size, 1):.1%} of entries)"
    return Audit(summary, per_class, co, sizes, modes, found)


def read_for_audit(data_cfg) -> tuple[DatasetIndex, list[Problem] | None]:
    """The configured data set's index and every problem its reader found, without stopping at the first (the
    folder format, synthetic included, collects them; other formats report what their reader reports)."""
    if data_cfg.name not in ("folder", "synthetic"):
        return index_from_config(data_cfg), None
    found: list[Problem] = []
    return build_index(resolve_data_root(data_cfg), data_cfg.image_pattern, collect=found), found
