"""Data audit: class counts, unlabeled images, label cardinality, grayscale images, image sizes, class co-occurrence
and every problem found, read from an index before any training."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mlabel_exp.data.images import open_image
from mlabel_exp.data.index import DatasetIndex


@dataclass
class Audit:
    summary: dict
    per_class: "object"       # pandas DataFrame: class, images (known positives), share[, unknown: labels unknown]
    cooccurrence: "object"    # pandas DataFrame: classes x classes, images holding both
    image_sizes: Counter
    image_modes: Counter
    problems: list[str] = field(default_factory=list)

    def to_text(self, top_sizes: int = 5) -> str:
        lines = ["Data set audit", "=============="]
        lines += [f"{k:<28} {v}" for k, v in self.summary.items()]
        lines += ["", "Images per class", self.per_class.to_string(index=False),
                  "", "Co-occurrence (images holding both classes)", self.cooccurrence.to_string(),
                  "", "Image sizes (width x height: images)"]
        lines += [f"  {w}x{h}: {n}" for (w, h), n in self.image_sizes.most_common(top_sizes)]
        lines += ["", "Image modes: " + ", ".join(f"{m}: {n}" for m, n in self.image_modes.most_common())]
        lines += ["", f"Problems ({len(self.problems)})"] + [f"  - {p}" for p in self.problems or ["none"]]
        return "\n".join(lines)


def audit(index: DatasetIndex, decode: bool = False) -> Audit:
    """Audit an index. Reads each image header (mode, size); ``decode`` also decodes every pixel,
    which finds truncated files at the cost of a full pass over the data."""
    import pandas as pd

    sizes: Counter = Counter()
    modes: Counter = Counter()
    problems = list(index.problems)
    for path in index.paths():
        try:
            with open_image(path) as im:  # the loader's guard: an image it would refuse is a finding
                sizes[im.size] += 1
                modes[im.mode] += 1
                if decode:
                    im.load()
        except Exception as e:  # any unreadable file is a finding, not a crash
            problems.append(f"{path}: unreadable image ({type(e).__name__}: {e})")
    labels = (np.asarray(index.labels) == 1).astype(np.int64)  # positives; an unknown (-1) is not one
    unknown = (np.asarray(index.labels) < 0).sum(0)
    n = len(index)
    counts = labels.sum(0)
    per_image = labels.sum(1)
    per_class = pd.DataFrame({"class": index.classes, "images": counts,
                              "share": np.round(counts / max(n, 1), 4)})
    if unknown.any():  # partial annotation: how many labels of each class are unknown
        per_class["unknown"] = unknown
    co = pd.DataFrame(labels.T @ labels, index=index.classes, columns=index.classes)
    grayscale = sum(v for m, v in modes.items() if m in ("L", "LA", "1", "I", "I;16", "F"))
    summary = {
        "root": str(index.root),
        "images": n,
        "classes": len(index.classes),
        "images with no label": f"{int((per_image == 0).sum())} ({(per_image == 0).mean():.1%})",
        "label cardinality (mean)": round(float(per_image.mean()), 3) if n else 0.0,
        "labels per image (max)": int(per_image.max()) if n else 0,
        "grayscale images": grayscale,
        "rarest class": f"{index.classes[int(counts.argmin())]} ({int(counts.min())})",
        "most frequent class": f"{index.classes[int(counts.argmax())]} ({int(counts.max())})",
    }
    if unknown.any():
        summary["unknown labels"] = f"{int(unknown.sum())} ({unknown.sum() / max(labels.size, 1):.1%} of all labels)"
    return Audit(summary, per_class, co, sizes, modes, problems)
