"""Human annotators in the loop of a real (tiny) pipeline: `dvc repro` stops for each request
batch, `salis labels import` lets it go on."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from support import new_project, run

pytestmark = pytest.mark.slow


def label_like_an_annotator(work: Path, batch: int, out: Path) -> set[int]:
    """A COCO export answering request batch `batch` with the dataset's hidden ground truth,
    numbered as an annotation tool would (its own category ids)."""
    request = json.loads((work / "data" / "requests" / f"cycle_{batch}" / "request.json").read_text())
    pool = json.loads((work / "data" / "prepared" / "pool.json").read_text())
    wanted = {im["id"] for im in request["images"]}
    export = {
        "images": request["images"],
        "categories": [{"id": c["id"] + 10, "name": c["name"]} for c in pool["categories"]],
        "annotations": [
            dict(a, category_id=a["category_id"] + 10) for a in pool["annotations"] if a["image_id"] in wanted
        ],
    }
    out.write_text(json.dumps(export))
    return wanted


def test_human_annotators_in_the_loop(tmp_path):
    """A test plays the annotator: dvc repro waits for labels, an import lets it go on, and
    while batch k awaits its labels the model of cycle k has been evaluated."""
    (tmp_path / "p").mkdir()
    work = new_project(tmp_path / "p", {"oracle": "human"})
    out = run(["dvc", "repro"], work, expect_ok=False)
    assert "waiting for the labels of request batch 0" in out and "salis labels import --cycle 0" in out
    assert not (work / "models" / "cycle_1").exists()
    readme = (work / "data" / "requests" / "cycle_0" / "README.txt").read_text()
    assert "no model exists yet, so the images come without" in readme

    wanted = label_like_an_annotator(work, 0, tmp_path / "export0.json")
    out = run(["salis", "labels", "import", "--cycle", "0", str(tmp_path / "export0.json")], work)
    assert "cycle 0: 4 images" in out
    again = run(["salis", "labels", "import", "--cycle", "0", str(tmp_path / "export0.json")], work, expect_ok=False)
    assert "already imported" in again

    out = run(["dvc", "repro"], work, expect_ok=False)  # cycle 1 runs, then batch 1 awaits labels
    assert "waiting for the labels of request batch 1" in out
    labeled = pd.read_parquet(work / "data" / "cycles" / "1" / "labeled.parquet")
    assert sorted(labeled["image_id"]) == sorted(wanted) and (labeled["source"] == "human").all()
    metrics = json.loads((work / "metrics" / "cycles" / "1.json").read_text())  # evaluate@1 ran before the stop
    status = " ".join(run(["salis", "status"], work).split())
    assert f"current model: cycle 1, mask AP50 {metrics['mask_AP50']:.3f}" in status
    assert "awaiting labels: request batch 1, 3 images" in status
    readme = (work / "data" / "requests" / "cycle_1" / "README.txt").read_text()
    assert f"scores mask AP50 {metrics['mask_AP50']:.3f} on the test split" in readme

    label_like_an_annotator(work, 1, tmp_path / "export1.json")
    run(["salis", "labels", "import", "--cycle", "1", str(tmp_path / "export1.json")], work)
    run(["dvc", "repro"], work)
    status = " ".join(run(["salis", "status"], work).split())  # status wraps its prose at the terminal
    assert "batch 2 (3 images" in status and "add c3: {k: 3, prev: 2, next: 4}" in status
