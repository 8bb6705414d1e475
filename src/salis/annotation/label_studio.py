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
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from salis.annotation.kinds import label_kind, label_kinds
from salis.artifacts.atomic import write_json, write_text
from salis.errors import SalisError

URL_ENV = "SALIS_LABEL_STUDIO_URL"
TOKEN_ENV = "SALIS_LABEL_STUDIO_TOKEN"
DEFAULT_URL = "http://localhost:8080"
PAGE = 100
MAX_PAGES = 1_000  # 100,000 projects or tasks: past this a `next` link that never ends is refused
MAX_BODY = 512 * 2**20  # bytes of one answer (an export of a large batch is tens of MiB)


class LabelStudio:
    """The REST calls salis needs; every failure is one SalisError line, with the token redacted.

    Each call ends within `deadline` seconds however the server answers (a server that trickles
    bytes keeps a per-read timeout from ever firing): the request runs in a daemon thread that the
    caller stops waiting for. A body over `max_body` bytes is refused while it streams in, never
    held whole; pagination stops after MAX_PAGES pages."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0,
                 deadline: float = 600.0, max_body: int = MAX_BODY) -> None:
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        token = token or os.environ.get(TOKEN_ENV)
        if not token:
            raise SalisError(f"no Label Studio token: set {TOKEN_ENV} (Account & Settings > Access Token) or pass --token")
        self._token = token
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Token {token}"})
        self.timeout, self.deadline, self.max_body = timeout, deadline, max_body

    def redact(self, text: str) -> str:
        """`text` without the token (a server may echo the request's headers back)."""
        return text.replace(self._token, "<token>")

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The parsed JSON body (None for an empty one) of one request, within the deadline."""
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["value"] = self._call(method, path, **kwargs)
            except BaseException as err:  # handed to the caller's thread
                outcome["error"] = err

        worker = threading.Thread(target=work, name="label-studio-call", daemon=True)
        worker.start()
        worker.join(self.deadline)
        if worker.is_alive():
            raise SalisError(self.redact(f"Label Studio at {self.url} did not finish {method} {path} within "
                                         f"{self.deadline:g} s; nothing was changed here"))
        error = outcome.get("error")
        if isinstance(error, SalisError):
            raise SalisError(self.redact(str(error))) from None
        if error is not None:
            raise SalisError(self.redact(f"Label Studio at {self.url}: {method} {path} failed: "
                                         f"{type(error).__name__}: {error}")[:400]) from None
        return outcome.get("value")

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout, stream=True, **kwargs)
        except requests.ConnectionError:
            raise SalisError(f"cannot reach Label Studio at {self.url}: is it running? (set {URL_ENV} or --url)") from None
        except requests.Timeout:
            raise SalisError(f"Label Studio at {self.url} did not answer {method} {path} within {self.timeout:g} s") from None
        except requests.RequestException as err:
            raise SalisError(f"Label Studio at {self.url}: {method} {path} failed: {err}") from None
        with response:
            if response.status_code in (401, 403):
                raise SalisError(f"Label Studio at {self.url} refused the token ({response.status_code}): check "
                                 f"{TOKEN_ENV} (the legacy API token; start the server with --enable-legacy-api-token)")
            body = self._body(response, method, path)
        if response.status_code >= 400:
            detail = body.decode("utf-8", "replace").strip().replace("\n", " ")[:300]
            raise SalisError(f"Label Studio answered {response.status_code} to {method} {path}: {detail}")
        if not body:
            return None
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise SalisError(f"Label Studio answered {method} {path} with a body that is not JSON "
                             f"({len(body)} bytes, starting {body[:40]!r})") from None

    def _body(self, response: requests.Response, method: str, path: str) -> bytes:
        """The response body, refused as soon as it passes max_body (declared or streamed)."""
        too_big = SalisError(f"Label Studio answered {method} {path} with more than {self.max_body / 2**20:g} MiB; "
                             "refused (is the URL a Label Studio server?)")
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise too_big
        chunks, size = [], 0
        try:
            for chunk in response.iter_content(1 << 16):
                size += len(chunk)
                if size > self.max_body:
                    raise too_big
                chunks.append(chunk)
        except requests.RequestException as err:
            raise SalisError(f"Label Studio at {self.url}: reading the answer to {method} {path} failed: {err}") from None
        return b"".join(chunks)

    # --- projects, storages, tasks ---------------------------------------------------------

    def _shaped(self, value: Any, kind: type, method: str, path: str, what: str) -> Any:
        """`value` if it is a `kind` (for a list: of dicts); else one line saying what came instead."""
        ok = isinstance(value, kind) and (kind is not list or all(isinstance(v, dict) for v in value))
        if kind is dict and ok and what.endswith("with an id"):
            ok = isinstance(value.get("id"), int) and not isinstance(value.get("id"), bool)
        if not ok:
            raise SalisError(self.redact(f"Label Studio answered {method} {path} with {type(value).__name__} where "
                                         f"{what} was expected: is {self.url} a Label Studio server?"))
        return value

    def _get_list(self, path: str, what: str, key: str) -> list[dict]:
        """A list answer, or the list under `key` of a paged answer."""
        body = self.call("GET", path)
        if isinstance(body, dict):
            body = body.get(key)
        return self._shaped(body, list, "GET", path, what)

    def projects(self) -> Iterator[dict]:
        for page in range(1, MAX_PAGES + 1):
            path = f"/api/projects/?page={page}&page_size={PAGE}"
            body = self.call("GET", path)
            results = self._shaped(body["results"] if isinstance(body, dict) and "results" in body else body,
                                   list, "GET", path, "a list of projects")
            yield from results
            if not isinstance(body, dict) or not body.get("next") or not results:
                return
        raise SalisError(f"Label Studio at {self.url} listed more than {MAX_PAGES} pages of projects; stopped there")

    def find_project(self, title: str) -> dict | None:
        found = next((p for p in self.projects() if p.get("title") == title), None)
        return None if found is None else self._shaped(found, dict, "GET", "/api/projects/", "a project with an id")

    def project(self, project_id: int) -> dict:
        path = f"/api/projects/{project_id}/"
        return self._shaped(self.call("GET", path), dict, "GET", path, "a project with an id")

    def create_project(self, title: str, label_config: str) -> dict:
        body = self.call("POST", "/api/projects/", json={"title": title, "label_config": label_config})
        return self._shaped(body, dict, "POST", "/api/projects/", "the new project with an id")

    def local_storages(self, project_id: int) -> list[dict]:
        return self._get_list(f"/api/storages/localfiles/?project={project_id}", "a list of storages", "results")

    def add_local_storage(self, project_id: int, path: Path) -> dict:
        body = {"project": project_id, "path": str(path), "use_blob_urls": True, "title": path.name, "regex_filter": ""}
        return self.call("POST", "/api/storages/localfiles/", json=body)

    def import_tasks(self, project_id: int, tasks: list[dict]) -> dict:
        return self.call("POST", f"/api/projects/{project_id}/import", json=tasks)

    def tasks(self, project_id: int) -> list[dict]:
        """Every task of the project (its task_number says how many: Label Studio answers a page
        past the end with an error, not an empty page)."""
        total = self.project(project_id).get("task_number") or 0
        if not isinstance(total, int) or total < 0:
            raise SalisError(f"Label Studio project {project_id} has a task_number of {str(total)[:40]!r}, not a count")
        out: list[dict] = []
        for page in range(1, MAX_PAGES + 1):
            if len(out) >= total:
                return out
            batch = self._get_list(f"/api/projects/{project_id}/tasks/?page={page}&page_size={PAGE}",
                                   "a list of tasks", "tasks")
            if not batch:
                return out
            out += batch
        raise SalisError(f"Label Studio project {project_id} listed more than {MAX_PAGES} pages of tasks; stopped there")

    def export_json(self, project_id: int) -> list[dict]:
        path = f"/api/projects/{project_id}/export?exportType=JSON&download_all_tasks=true"
        return self._shaped(self.call("GET", path), list, "GET", path, "a JSON export (a list of tasks)")

    def serves(self, image_url: str) -> bool:
        """Whether the server answers an image reference of a task (a local-files URL) with 200
        (headers only: the image itself is not read)."""
        try:
            with self.session.get(self.url + image_url, timeout=self.timeout, stream=True) as response:
                return response.status_code == 200
        except requests.RequestException:
            return False


# --- push and pull ---------------------------------------------------------------------------


def project_title(root: Path, cycle: int, label_type: str) -> str:
    return f"salis {root.resolve().name} cycle {cycle} {label_type}"


def batch_types(request_dir: Path) -> list[str]:
    """The label types a request batch asks for (one request file each)."""
    return [k.name for k in label_kinds() if (request_dir / f"request{k.suffix}.json").is_file()]


def _state_path(state_dir: Path, cycle: int) -> Path:
    return state_dir / f"cycle_{cycle}.json"


def _image_ids(tasks: list[dict]) -> list[int]:
    ids = []
    for task in tasks:
        data = task.get("data")
        if isinstance(data, dict) and "salis_image_id" in data:
            value = data["salis_image_id"]
            if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
                raise SalisError(f"Label Studio task {str(task.get('id'))[:20]} has salis_image_id "
                                 f"{str(value)[:40]!r}, not an image id")
            ids.append(int(value))
    return sorted(ids)


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
        suffix = label_kind(label_type).suffix
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
        suffix = label_kind(label_type).suffix
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
