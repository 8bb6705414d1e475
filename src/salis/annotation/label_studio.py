"""A Label Studio server in the loop: push a request batch as projects, pull the labels back.

A small client of Label Studio's REST API (requests; the SDK is heavy). The server's URL and
token come from the environment (SALIS_LABEL_STUDIO_URL, SALIS_LABEL_STUDIO_TOKEN) or the
command line, never from a tracked file; what a push made (project ids per label type) is kept
in .salis/label_studio/ (git-ignored), without URL or token.

push: per label type of batch K, a project "salis <project folder> cycle K <type>" with the
batch's labeling config, a local-files storage on the image folder (Label Studio serves an image
only from such a storage under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT) and the batch's tasks,
the model's predictions as pre-annotations. Pushing again finds the project and adds nothing;
a project whose tasks differ from the batch is refused (its annotations would be lost).

pull: Label Studio's JSON export of each project goes through the same validated import as
`salis labels import` (salis.annotation.importer); a project whose tasks were added or removed
since the push is refused first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from salis.annotation.label_types import LABEL_TYPES, label_suffix
from salis.artifacts.atomic import write_json, write_text
from salis.errors import SalisError

URL_ENV = "SALIS_LABEL_STUDIO_URL"
TOKEN_ENV = "SALIS_LABEL_STUDIO_TOKEN"
DEFAULT_URL = "http://localhost:8080"
PAGE = 100


class LabelStudio:
    """The REST calls salis needs; every failure is one SalisError line."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0) -> None:
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        token = token or os.environ.get(TOKEN_ENV)
        if not token:
            raise SalisError(f"no Label Studio token: set {TOKEN_ENV} (Account & Settings > Access Token) or pass --token")
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Token {token}"})
        self.timeout = timeout

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.ConnectionError:
            raise SalisError(f"cannot reach Label Studio at {self.url}: is it running? (set {URL_ENV} or --url)") from None
        except requests.Timeout:
            raise SalisError(f"Label Studio at {self.url} did not answer {method} {path} within {self.timeout:g} s") from None
        except requests.RequestException as err:
            raise SalisError(f"Label Studio at {self.url}: {method} {path} failed: {err}") from None
        if response.status_code in (401, 403):
            raise SalisError(f"Label Studio at {self.url} refused the token ({response.status_code}): check "
                             f"{TOKEN_ENV} (the legacy API token; start the server with --enable-legacy-api-token)")
        if response.status_code >= 400:
            detail = response.text.strip().replace("\n", " ")[:300]
            raise SalisError(f"Label Studio answered {response.status_code} to {method} {path}: {detail}")
        return response.json() if response.content else None

    # --- projects, storages, tasks ---------------------------------------------------------

    def projects(self) -> Iterator[dict]:
        page = 1
        while True:
            body = self.call("GET", f"/api/projects/?page={page}&page_size={PAGE}")
            results = body["results"] if isinstance(body, dict) else body
            yield from results
            if not isinstance(body, dict) or not body.get("next"):
                return
            page += 1

    def find_project(self, title: str) -> dict | None:
        return next((p for p in self.projects() if p.get("title") == title), None)

    def project(self, project_id: int) -> dict:
        return self.call("GET", f"/api/projects/{project_id}/")

    def create_project(self, title: str, label_config: str) -> dict:
        return self.call("POST", "/api/projects/", json={"title": title, "label_config": label_config})

    def local_storages(self, project_id: int) -> list[dict]:
        return self.call("GET", f"/api/storages/localfiles/?project={project_id}")

    def add_local_storage(self, project_id: int, path: Path) -> dict:
        body = {"project": project_id, "path": str(path), "use_blob_urls": True, "title": path.name, "regex_filter": ""}
        return self.call("POST", "/api/storages/localfiles/", json=body)

    def import_tasks(self, project_id: int, tasks: list[dict]) -> dict:
        return self.call("POST", f"/api/projects/{project_id}/import", json=tasks)

    def tasks(self, project_id: int) -> list[dict]:
        """Every task of the project (its task_number says how many: Label Studio answers a page
        past the end with an error, not an empty page)."""
        total = int(self.project(project_id).get("task_number") or 0)
        out, page = [], 1
        while len(out) < total:
            batch = self.call("GET", f"/api/projects/{project_id}/tasks/?page={page}&page_size={PAGE}")
            batch = batch.get("tasks", []) if isinstance(batch, dict) else batch
            if not batch:
                break
            out += batch
            page += 1
        return out

    def export_json(self, project_id: int) -> list[dict]:
        return self.call("GET", f"/api/projects/{project_id}/export?exportType=JSON&download_all_tasks=true")

    def serves(self, image_url: str) -> bool:
        """Whether the server answers an image reference of a task (a local-files URL) with 200."""
        try:
            response = self.session.get(self.url + image_url, timeout=self.timeout)
        except requests.RequestException:
            return False
        return response.status_code == 200


# --- push and pull ---------------------------------------------------------------------------


def project_title(root: Path, cycle: int, label_type: str) -> str:
    return f"salis {root.resolve().name} cycle {cycle} {label_type}"


def batch_types(request_dir: Path) -> list[str]:
    """The label types a request batch asks for (one request file each)."""
    return [t for t in LABEL_TYPES if (request_dir / f"request{label_suffix(t)}.json").is_file()]


def _state_path(state_dir: Path, cycle: int) -> Path:
    return state_dir / f"cycle_{cycle}.json"


def _image_ids(tasks: list[dict]) -> list[int]:
    return sorted(int(t["data"]["salis_image_id"]) for t in tasks if "salis_image_id" in t.get("data", {}))


def push_batch(client: LabelStudio, root: Path, request_dir: Path, cycle: int, state_dir: Path,
               image_folder: Path) -> list[str]:
    """Create (or find) one project per label type of batch `cycle`; one line per project."""
    types = batch_types(request_dir)
    if not types:
        raise SalisError(f"{request_dir}: no request batch for cycle {cycle}; `dvc repro` writes it at the request stage")
    state_path = _state_path(state_dir, cycle)
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    lines = []
    for label_type in types:
        suffix = label_suffix(label_type)
        tasks = json.loads((request_dir / f"label_studio_tasks{suffix}.json").read_text())
        config = (request_dir / f"label_config{suffix}.xml").read_text()
        title = project_title(root, cycle, label_type)
        project = client.find_project(title)
        if project is None:
            project = client.create_project(title, config)
            client.add_local_storage(project["id"], image_folder.resolve())
            client.import_tasks(project["id"], tasks)
            note = f"created with {len(tasks)} tasks"
        else:
            present = _image_ids(client.tasks(project["id"]))
            if present != _image_ids(tasks):
                raise SalisError(f"Label Studio project {title!r} (id {project['id']}) holds other tasks than batch "
                                 f"{cycle}'s {label_type} request ({len(present)} vs {len(tasks)} images): delete it in "
                                 "Label Studio to push this batch again (its annotations go with it)")
            if not any(Path(s.get("path", "")) == image_folder.resolve() for s in client.local_storages(project["id"])):
                client.add_local_storage(project["id"], image_folder.resolve())
            note = f"already there with its {len(present)} tasks"
        if tasks and not client.serves(tasks[0]["data"]["image"]):
            raise SalisError(
                f"Label Studio does not serve {tasks[0]['data']['image']}: start it with "
                f"LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT="
                f"{image_folder.resolve().parent} (the image folder's parent; see {request_dir / 'README.txt'})"
            )
        state[label_type] = project["id"]
        lines.append(f"{label_type}: project {title!r} (id {project['id']}) {note}; "
                     f"{client.url}/projects/{project['id']}/data")
    write_json(state_path, state)
    return lines


def pull_batch(client: LabelStudio, root: Path, request_dir: Path, cycle: int, state_dir: Path,
               exports_dir: Path) -> dict[str, Path]:
    """Export every project of batch `cycle` as JSON into exports_dir, after checking that each
    still holds exactly the pushed tasks; {label type: export file} for the validated import."""
    state_path = _state_path(state_dir, cycle)
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    out = {}
    for label_type in batch_types(request_dir):
        suffix = label_suffix(label_type)
        title = project_title(root, cycle, label_type)
        project_id = state.get(label_type)
        if project_id is None:
            found = client.find_project(title)
            if found is None:
                raise SalisError(f"no Label Studio project {title!r}: run `salis labels push --cycle {cycle}` first")
            project_id = found["id"]
        pushed = _image_ids(json.loads((request_dir / f"label_studio_tasks{suffix}.json").read_text()))
        tasks = client.export_json(project_id)
        present = _image_ids(tasks)
        if present != pushed or len(tasks) != len(pushed):
            added = sorted(set(present) - set(pushed))
            removed = sorted(set(pushed) - set(present))
            extra = len(tasks) - len(present)
            raise SalisError(
                f"Label Studio project {title!r} (id {project_id}) changed since the push: "
                f"{len(added) + extra} task(s) added, {len(removed)} removed (e.g. image ids {(added or removed)[:5]}); "
                "nothing was imported"
            )
        path = exports_dir / f"cycle_{cycle}{suffix}.json"
        write_text(path, json.dumps(tasks))
        out[label_type] = path
    return out
