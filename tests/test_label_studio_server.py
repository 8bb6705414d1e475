"""salis labels push / pull against a real Label Studio server (its own environment, offline on
127.0.0.1, SQLite). A test plays the annotator through the REST API: it accepts the predictions
of one image, corrects a mask, deletes a false positive and adds a missed instance on another,
leaves a third unlabeled; the pull must store exactly that. Hostile cases are refused with one
line and nothing written.

Needs Label Studio: `make label-studio` (or SALIS_LABEL_STUDIO_BIN=/path/to/label-studio);
`make test-label-studio` runs this file."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from salis.annotation.importer import import_labels
from salis.artifacts.layout import Layout
from salis.cli import app
from salis.data.prepared import PreparedData, SimulatedOracle
from salis.params import parse_params
from support import coco_export, run_stage, tiny

pytestmark = pytest.mark.label_studio
ROOT = Path(__file__).resolve().parents[1]
TOKEN = "5a11500000000000000000000000000000000000"


def label_studio_bin() -> str:
    found = os.environ.get("SALIS_LABEL_STUDIO_BIN") or str(ROOT / ".label-studio" / "venv" / "bin" / "label-studio")
    if not Path(found).is_file():
        pytest.skip("Label Studio is not installed: `make label-studio` (its own environment), then "
                    "`make test-label-studio`")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny human-mode project waiting for the mask labels of batch 1, and a server serving it."""
    root = tmp_path_factory.mktemp("ls") / "lab"
    root.mkdir()
    # pre-annotate every detection (all score above model.box_score_thresh 0.05, where masks are kept)
    raw = tiny(oracle="human", annotation={"pre_annotation_score": 0.05})
    raw["select"] = dict(raw["select"], budget=3)
    params = parse_params(raw)
    layout = Layout(root)
    old = Path.cwd()
    os.chdir(root)
    try:
        run_stage("prepare", params, Layout())
        run_stage("init", params, Layout())
        run_stage("init_model", params, Layout())
        oracle = SimulatedOracle(PreparedData(layout.prepared))
        request0 = json.loads((layout.requests(0) / "request.json").read_text())
        (root / "export0.json").write_text(json.dumps(coco_export(request0, oracle, "mask")))
        import_labels(root / "export0.json", layout.requests(0) / "request.json", layout.imported_labels(0))
        for stage in ("annotate", "pseudo_label", "weak_label", "train", "infer_score", "select", "evaluate", "request"):
            run_stage(stage, params, Layout(), 1)
    finally:
        os.chdir(old)
    images = (root / json.loads((layout.requests(1) / "request.json").read_text())["info"]["salis"]["image_root"]).resolve()
    port = free_port()
    data = root.parent / "ls-data"
    env = dict(
        os.environ, LABEL_STUDIO_BASE_DATA_DIR=str(data), LABEL_STUDIO_USERNAME="annotator@example.com",
        LABEL_STUDIO_PASSWORD="salis-test-pass", LABEL_STUDIO_USER_TOKEN=TOKEN, LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false", SENTRY_DSN="", FRONTEND_SENTRY_DSN="",
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true", LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(images.parent),
    )
    log = open(root.parent / "label-studio.log", "w")
    server = subprocess.Popen([label_studio_bin(), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p",
                               str(port), "--enable-legacy-api-token"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert server.poll() is None and time.monotonic() < deadline, \
            f"Label Studio did not start: {(root.parent / 'label-studio.log').read_text()[-2000:]}"
        time.sleep(1)
    yield root, url, layout
    server.terminate()
    server.wait(30)
    log.close()
    shutil.rmtree(data, ignore_errors=True)


def cli(root: Path, url: str, *args: str, token: str = TOKEN):
    old = Path.cwd()
    os.chdir(root)
    try:
        return CliRunner().invoke(app, [*args, "--url", url, "--token", token])
    finally:
        os.chdir(old)


def api(url: str, method: str, path: str, **kwargs):
    response = requests.request(method, url + path, headers={"Authorization": f"Token {TOKEN}"}, timeout=30, **kwargs)
    assert response.status_code < 400, response.text
    return response.json() if response.content else None


def square_polygon(x0: float, y0: float, x1: float, y1: float, w: int, h: int) -> list[list[float]]:
    return [[x0 / w * 100, y0 / h * 100], [x1 / w * 100, y0 / h * 100], [x1 / w * 100, y1 / h * 100],
            [x0 / w * 100, y1 / h * 100]]


def polygon_region(points: list[list[float]], label: str, w: int, h: int) -> dict:
    return {"from_name": "label", "to_name": "image", "type": "polygonlabels", "original_width": w, "original_height": h,
            "value": {"points": points, "closed": True, "polygonlabels": [label]}}


def mask_of(points: list[list[float]], w: int, h: int) -> np.ndarray:
    flat = [v for x, y in points for v in (x * w / 100, y * h / 100)]
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([flat], h, w))).astype(bool)


def test_push_pull_round_trip_stores_what_the_annotator_posted(project):
    root, url, layout = project
    out = cli(root, url, "labels", "push", "--cycle", "1")
    assert out.exit_code == 0, out.output
    assert "created with 3 tasks" in out.output
    again = cli(root, url, "labels", "push", "--cycle", "1")
    assert again.exit_code == 0 and "already there with its 3 tasks" in again.output
    assert TOKEN not in (layout.label_studio_state / "cycle_1.json").read_text()
    (project_id,) = json.loads((layout.label_studio_state / "cycle_1.json").read_text()).values()
    tasks = sorted(api(url, "GET", f"/api/projects/{project_id}/tasks/?page_size=100"),
                   key=lambda t: t["data"]["salis_image_id"])
    assert all(t["predictions"] for t in tasks), "the predictions came along as pre-annotations"
    # the images display: the task URL resolves on the server
    assert requests.get(url + tasks[0]["data"]["image"], headers={"Authorization": f"Token {TOKEN}"}).status_code == 200
    first, second, third = tasks
    w, h = first["data"].get("width", 64), 64
    accepted = [dict(r) for r in first["predictions"][0]["result"]]
    api(url, "POST", f"/api/tasks/{first['id']}/annotations/", json={"result": accepted})
    predicted = [dict(r) for r in second["predictions"][0]["result"]]
    corrected = dict(predicted[0], value=dict(predicted[0]["value"], points=square_polygon(4, 4, 20, 16, w, h)))
    missed = polygon_region(square_polygon(40, 40, 60, 58, w, h), "rod", w, h)
    kept = [corrected, *predicted[2:], missed]  # predicted[1] was a false positive: deleted
    api(url, "POST", f"/api/tasks/{second['id']}/annotations/", json={"result": kept})
    # the third image is left unlabeled
    refused = cli(root, url, "labels", "pull", "--cycle", "1", "--no-dvc-add")
    assert refused.exit_code == 2 and "not labeled" in refused.output and "--partial" in refused.output
    assert not layout.imported_labels(1).exists()
    pulled = cli(root, url, "labels", "pull", "--cycle", "1", "--partial", "--no-dvc-add")
    assert pulled.exit_code == 0, pulled.output
    assert f"2 images with mask labels, {len(accepted) + len(kept)} instances" in pulled.output
    labels = json.loads(layout.imported_labels(1).read_text())
    assert labels["partial_unlabeled"] == [third["data"]["salis_image_id"]]
    names = {c["id"]: c["name"] for c in labels["categories"]}
    for task, posted in ((first, accepted), (second, kept)):
        image_id = task["data"]["salis_image_id"]
        stored = [a for a in labels["annotations"] if a["image_id"] == image_id]
        assert len(stored) == len(posted)  # one instance per region, nothing split or merged
        for ann, region in zip(stored, posted):
            assert names[ann["category_id"]] == region["value"]["polygonlabels"][0]
            truth = mask_of(region["value"]["points"], w, h)
            mask = mask_utils.decode({"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()})
            assert abs(int(mask.sum()) - int(truth.sum())) <= truth.shape[0]  # areas within a pixel row
            assert (mask.astype(bool) & truth).sum() / (mask.astype(bool) | truth).sum() > 0.85


def test_hostile_projects_and_servers_are_refused_with_one_line(project):
    root, url, layout = project
    assert cli(root, url, "labels", "push", "--cycle", "1").exit_code == 0
    (project_id,) = json.loads((layout.label_studio_state / "cycle_1.json").read_text()).values()
    bad_token = cli(root, url, "labels", "pull", "--cycle", "1", token="0" * 40)
    assert bad_token.exit_code == 2 and "refused the token" in bad_token.output and "Traceback" not in bad_token.output
    unreachable = cli(root, f"http://127.0.0.1:{free_port()}", "labels", "pull", "--cycle", "1")
    assert unreachable.exit_code == 2 and "cannot reach Label Studio" in unreachable.output
    before = layout.imported_labels(1).read_bytes() if layout.imported_labels(1).exists() else None
    task = api(url, "GET", f"/api/projects/{project_id}/tasks/?page_size=100")[0]
    api(url, "POST", f"/api/projects/{project_id}/import", json=[{"data": dict(task["data"], salis_image_id=999)}])
    changed = cli(root, url, "labels", "pull", "--cycle", "1", "--partial", "--replace", "--no-dvc-add")
    assert changed.exit_code == 2 and "changed since the push: 1 task(s) added" in changed.output
    after = layout.imported_labels(1).read_bytes() if layout.imported_labels(1).exists() else None
    assert before == after  # nothing changed
