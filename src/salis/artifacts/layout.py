"""Where every artifact of the pipeline lives (the same paths dvc.yaml names)."""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

    @property
    def artifact_roots(self) -> list[Path]:
        """The folders stages write into (where stale temp files are looked for)."""
        return [self.root / "data", self.root / "models", self.root / "metrics", self.labels_dir, self.shards]

    @property
    def locks(self) -> Path:
        """Per-stage locks (git-ignored): one process at a time writes a stage's outputs."""
        return self.root / ".salis" / "locks"

    @property
    def shards(self) -> Path:
        """Pool scoring's shard cache (git-ignored, outside DVC's outputs, so a killed stage resumes)."""
        return self.root / ".salis" / "shards"

    @property
    def label_studio_state(self) -> Path:
        """What `salis labels push` made (project ids per batch; git-ignored, no URL or token)."""
        return self.root / ".salis" / "label_studio"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    def cycle_dir(self, k: int) -> Path:
        return self.root / "data" / "cycles" / str(k)

    def labeled(self, k: int) -> Path:
        return self.cycle_dir(k) / "labeled.parquet"

    def pseudo(self, k: int) -> Path:
        return self.cycle_dir(k) / "pseudo.parquet"

    def pseudo_uncertain(self, k: int) -> Path:
        """pseudo.background confident: the boxes near which pseudo@k's images teach no background
        (tables.PSEUDO_UNCERTAIN)."""
        return self.cycle_dir(k) / "pseudo_uncertain.parquet"

    def teacher_pseudo(self, k: int) -> Path:
        """pseudo.mode teacher: the pseudo-labels train@k's teacher made (tables.TEACHER_PSEUDO)."""
        return self.cycle_dir(k) / "teacher_pseudo.parquet"

    def pseudo_gate(self, k: int) -> Path:
        """Which gate pseudo_label@k used and why (salis.loop.gate.GateReport)."""
        return self.root / "metrics" / "pseudo_gate" / f"{k}.json"

    def weak(self, k: int) -> Path:
        """Cycle k's training targets made from weak labels (weak_label@k)."""
        return self.cycle_dir(k) / "weak.parquet"

    def weak_summary(self, k: int) -> Path:
        """What weak_label@k made of the weak labels (points claimed, refined, failed, ...)."""
        return self.cycle_dir(k) / "weak.json"

    def instances(self, k: int) -> Path:
        return self.cycle_dir(k) / "instances.parquet"

    def images(self, k: int) -> Path:
        return self.cycle_dir(k) / "images.parquet"

    def selected(self, k: int) -> Path:
        """Images picked at cycle k (init's random set for k = 0), awaiting their labels."""
        return self.cycle_dir(k) / "selected.parquet"

    def annotations(self, k: int) -> Path:
        """Ground truth of every image labeled for cycle k (cumulative, COCO-like JSON)."""
        return self.cycle_dir(k) / "annotations.json"

    def requests(self, k: int) -> Path:
        """The request batch of cycle k's selection, for annotators."""
        return self.root / "data" / "requests" / f"cycle_{k}"

    @property
    def labels_dir(self) -> Path:
        """Human labels, one file per request batch, written by `salis labels import`."""
        return self.root / "labels"

    def imported_labels(self, k: int, *, suffix: str = "") -> Path:
        """Batch k's imported labels of one label kind: cycle_K.json (masks), cycle_K.point.json, ...
        (`suffix`: the kind's, salis.annotation.kinds)."""
        return self.labels_dir / f"cycle_{k}{suffix}.json"

    def embeddings(self, k: int) -> Path:
        return self.cycle_dir(k) / "embeddings"

    def model(self, k: int) -> Path:
        return self.root / "models" / f"cycle_{k}" / "model.pt"

    @property
    def pretrain(self) -> Path:
        """Stage `pretrain`'s folder: summary.json, and backbone.pt when pretraining is enabled."""
        return self.root / "models" / "pretrain"

    @property
    def pretrained_backbone(self) -> Path:
        """The self-supervised ResNet body (a torchvision-layout state dict) init_model loads."""
        return self.pretrain / "backbone.pt"

    @property
    def pretrain_summary(self) -> Path:
        """What was pretrained (method, backbone, images, steps, loss per epoch): same params, same bytes."""
        return self.pretrain / "summary.json"

    @property
    def pretrain_metrics(self) -> Path:
        """The pretraining's cost (seconds) and final loss, for `dvc metrics show`: apart from the
        cycles' and from the summary, whose bytes must not vary with the machine's speed."""
        return self.root / "metrics" / "pretrain.json"

    def live(self, k: int) -> Path:
        return self.root / "models" / f"cycle_{k}" / "live"

    def train_log(self, k: int) -> Path:
        """Cycle k's training losses and learning rate by iteration (a `dvc plots` source)."""
        return self.root / "metrics" / "train" / f"{k}.csv"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics" / "cycles"

    def metrics(self, k: int) -> Path:
        return self.metrics_dir / f"{k}.json"

    def test_detections(self, k: int) -> Path:
        return self.cycle_dir(k) / "test_detections.parquet"

    def test_images(self, k: int) -> Path:
        """Per test image of cycle k: instances, detections, mask AP50."""
        return self.root / "metrics" / "test_images" / f"{k}.csv"

    def pictures(self, k: int) -> Path:
        """Cycle k's galleries (selected batch, pseudo-labels, worst test images)."""
        return self.root / "metrics" / "pictures" / str(k)

    @property
    def curves_png(self) -> Path:
        return self.root / "metrics" / "curves.png"

    @property
    def calibration_png(self) -> Path:
        return self.root / "metrics" / "mask_iou_calibration.png"

    def iou_pairs(self, k: int) -> Path:
        return self.root / "metrics" / "iou" / f"{k}.csv"

    @property
    def calibration(self) -> Path:
        return self.root / "metrics" / "mask_iou_calibration.csv"

    @property
    def curve(self) -> Path:
        return self.root / "metrics" / "curve.csv"

    @property
    def summary(self) -> Path:
        return self.root / "metrics" / "summary.json"
