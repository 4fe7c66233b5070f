"""A Hugging Face-compatible hub on 127.0.0.1 for tests: it serves model and dataset repositories from a
folder (`<root>/models/<org>/<name>/...`, `<root>/datasets/<org>/<name>/...`) to the real `huggingface_hub`
and `datasets` clients (`HF_ENDPOINT=<server.url>`), answering what they request (logged in `requests`):
repository info, file trees and path info, and file downloads with HEAD, ranges and the hub's headers.

`glue_repository` writes an `nyu-mll/glue` repository in the hub's own layout (a parquet file per task and
split, the card's configs and the feature schema with the label names) from local GLUE folders.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

SHA = "0123456789abcdef0123456789abcdef01234567"  # one commit per repository, as the clients only echo it


class Hub:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.requests: list[str] = []
        self.unknown: list[str] = []
        self.die_after: int | None = None  # bytes of a file download after which the server dies
        self.dead = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Hub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self.dead:
            self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------------------------------ repositories
    def repo(self, kind: str, repo_id: str) -> Path | None:
        folder = self.root / kind / repo_id
        return folder if folder.is_dir() else None

    def files(self, folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file())

    def entry(self, folder: Path, path: Path) -> dict:
        if path.is_dir():
            return {"type": "directory", "path": path.relative_to(folder).as_posix(), "oid": SHA, "size": 0}
        data = path.read_bytes()
        entry = {"type": "file", "path": path.relative_to(folder).as_posix(), "size": len(data),
                 "oid": hashlib.sha1(data).hexdigest()}
        if path.suffix in (".parquet", ".safetensors", ".bin"):  # served as LFS files, as the hub does
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def info(self, kind: str, repo_id: str, folder: Path) -> dict:
        siblings = [{"rfilename": p.relative_to(folder).as_posix()} for p in self.files(folder)]
        out = {"id": repo_id, "_id": repo_id, "sha": SHA, "private": False, "gated": False, "disabled": False,
               "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
               "lastModified": "2026-12-01T00:00:00.000Z", "createdAt": "2026-12-01T00:00:00.000Z"}
        if kind == "models":
            out.update(modelId=repo_id, library_name="transformers")
        return out

    # ------------------------------------------------------------------------------------------ HTTP
    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: the requests are kept in hub.requests
                pass

            def do_HEAD(self) -> None:
                self.route(head=True)

            def do_GET(self) -> None:
                self.route(head=False)

            def do_POST(self) -> None:
                self.route(head=False)

            def route(self, head: bool) -> None:
                url = urlparse(self.path)
                path = unquote(url.path)
                hub.requests.append(f"{self.command} {path}")
                m = re.fullmatch(r"/api/(models|datasets)/(.+?)(?:/revision/([^/]+))?", path)
                if m and self.command == "GET" and "/tree/" not in path and "/paths-info/" not in path:
                    return self.info(m.group(1), m.group(2))
                m = re.fullmatch(r"/api/(models|datasets)/(.+?)/tree/([^/]+)(?:/(.*))?", path)
                if m:
                    return self.tree(m.group(1), m.group(2), m.group(4) or "", "recursive=true" in url.query.lower()
                                     or "recursive=1" in url.query)
                m = re.fullmatch(r"/api/(models|datasets)/(.+?)/paths-info/([^/]+)", path)
                if m and self.command == "POST":
                    return self.paths_info(m.group(1), m.group(2))
                m = re.fullmatch(r"/(datasets/)?(.+?)/resolve/([^/]+)/(.+)", path)
                if m:
                    return self.file("datasets" if m.group(1) else "models", m.group(2), m.group(4), head)
                hub.unknown.append(f"{self.command} {self.path}")
                self.send_json({"error": "not found"}, 404)

            def send_json(self, body, status: int = 200, code: str = "RepoNotFound") -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 404:
                    self.send_header("X-Error-Code", code)
                self.end_headers()
                self.wfile.write(data)

            def info(self, kind: str, repo_id: str) -> None:
                folder = hub.repo(kind, repo_id)
                if folder is None:
                    return self.send_json({"error": "Repository not found"}, 404)
                self.send_json(hub.info(kind, repo_id, folder))

            def tree(self, kind: str, repo_id: str, sub: str, recursive: bool) -> None:
                folder = hub.repo(kind, repo_id)
                if folder is None:
                    return self.send_json({"error": "Repository not found"}, 404)
                if not (folder / sub).exists():
                    return self.send_json({"error": "Entry not found"}, 404, "EntryNotFound")
                found = (folder / sub).rglob("*") if recursive else (folder / sub).iterdir()
                self.send_json([hub.entry(folder, p) for p in sorted(found)])

            def paths_info(self, kind: str, repo_id: str) -> None:
                folder = hub.repo(kind, repo_id)
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length).decode()
                if "application/json" in self.headers.get("Content-Type", ""):
                    paths = json.loads(body).get("paths", [])
                else:
                    paths = [unquote(v) for k, v in (p.split("=", 1) for p in body.split("&") if "=" in p)
                             if k == "paths"]
                if folder is None:
                    return self.send_json({"error": "not found"}, 404)
                self.send_json([hub.entry(folder, folder / p) for p in paths if (folder / p).exists()])

            def file(self, kind: str, repo_id: str, name: str, head: bool) -> None:
                folder = hub.repo(kind, repo_id)
                path = folder / name if folder is not None else None
                if path is None or not path.is_file():
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound" if folder is not None else "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                entry = hub.entry(folder, path)
                etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
                start, end = 0, len(data) - 1
                ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if ranged:
                    start, end = int(ranged.group(1)), int(ranged.group(2) or end)
                self.send_response(206 if ranged else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", f'"{etag}"')
                self.send_header("X-Repo-Commit", SHA)
                if "lfs" in entry:
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                if ranged:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if head:
                    return
                body = data[start:end + 1]
                if hub.die_after is not None and len(body) > hub.die_after:
                    # The server dies mid-download: part of the file, then no server at all (a retry is refused).
                    self.wfile.write(body[:hub.die_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    hub.dead = True
                    threading.Thread(target=hub._server.shutdown, daemon=True).start()
                    hub._server.socket.close()
                    return
                self.wfile.write(body)

        return Handler


# The hub's `nyu-mll/glue` schema: per task, its text columns and label names (None: STS-B's float score).
HUB_GLUE = {
    "cola": (("sentence",), ("unacceptable", "acceptable")),
    "sst2": (("sentence",), ("negative", "positive")),
    "mrpc": (("sentence1", "sentence2"), ("not_equivalent", "equivalent")),
    "stsb": (("sentence1", "sentence2"), None),
    "qqp": (("question1", "question2"), ("not_duplicate", "duplicate")),
    "mnli": (("premise", "hypothesis"), ("entailment", "neutral", "contradiction")),
    "qnli": (("question", "sentence"), ("entailment", "not_entailment")),
    "rte": (("sentence1", "sentence2"), ("entailment", "not_entailment")),
    "wnli": (("sentence1", "sentence2"), ("not_entailment", "entailment")),
}


def glue_repository(root: Path, folders: dict[str, str]) -> Path:
    """`<root>/datasets/nyu-mll/glue` in the hub's layout, made from local GLUE folders (task -> folder):
    `<task>/<split>-00000-of-00001.parquet` with the hub's features (label names as a ClassLabel), and the
    card's YAML `configs` (data files per split) and `dataset_info` (features, split sizes)."""
    from datasets import ClassLabel, Dataset, Features, Value

    from fsd.data import load_raw
    from fsd.tasks import get_task

    repo = root / "datasets" / "nyu-mll" / "glue"
    configs, infos = [], []
    for name, data_dir in folders.items():
        task = get_task(name)
        columns, names = HUB_GLUE[name]
        raw = load_raw(task, data_dir)
        features = Features({**{c: Value("string") for c in columns},
                             "label": Value("float32") if names is None else ClassLabel(names=list(names)),
                             "idx": Value("int32")})
        files, splits = [], []
        for split in ("train", *task.dev_splits):
            rows = raw[split]
            table = {c: rows["text_a" if i == 0 else "text_b"] for i, c in enumerate(columns)}
            table.update(label=rows["label"], idx=list(range(len(rows))))
            path = repo / name / f"{split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            Dataset.from_dict(table, features=features).to_parquet(str(path))
            files.append({"split": split, "path": f"{name}/{split}-*"})
            splits.append({"name": split, "num_bytes": path.stat().st_size, "num_examples": len(rows)})
        configs.append({"config_name": name, "data_files": files})
        feats = [{"name": c, "dtype": "string"} for c in columns]
        feats.append({"name": "label", "dtype": "float32" if names is None else
                      {"class_label": {"names": {str(i): n for i, n in enumerate(names)}}}})
        feats.append({"name": "idx", "dtype": "int32"})
        infos.append({"config_name": name, "features": feats, "splits": splits})
    card = {"configs": configs, "dataset_info": infos}
    (repo / "README.md").write_text("---\n" + json.dumps(card, indent=1) + "\n---\n# GLUE (test copy)\n")
    return repo


def model_repository(root: Path, repo_id: str, folder: str | Path) -> Path:
    """`<root>/models/<repo_id>`: the files of a local model folder, as the hub serves a model repository."""
    import shutil

    repo = root / "models" / repo_id
    shutil.copytree(folder, repo, dirs_exist_ok=True)
    return repo


def standin_glue(folder: Path, glue_dir: str, rows: int = 400) -> Path:
    """Format-true GLUE folders for the tasks whose real rows are not on this machine, made from real GLUE
    sentences: QQP (question pairs: MRPC's sentence pairs as questions, its paraphrase label as duplicate),
    MNLI (RTE's pairs, entailment kept, not_entailment split into neutral and contradiction by row parity,
    in MNLI's columns, with its matched and mismatched dev files) and QNLI (its real dev rows, split into a
    train and a dev file). The copies are for loading and format only: their labels carry no meaning beyond."""
    import csv as _csv

    def rows_of(path: Path) -> list[dict]:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return list(_csv.DictReader(f, delimiter="\t", quoting=_csv.QUOTE_NONE))

    def write(path: Path, header: list[str], body: list[list[str]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join("\t".join(r) for r in [header, *body]) + "\n", encoding="utf-8")

    mrpc = rows_of(Path(glue_dir) / "MRPC" / "train.tsv")
    qqp = [[str(i), str(2 * i), str(2 * i + 1), r["#1 String"].rstrip(".") + "?", r["#2 String"].rstrip(".") + "?",
            r["Quality"]] for i, r in enumerate(mrpc[:rows + rows // 4])]
    head = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    write(folder / "QQP" / "train.tsv", head, qqp[:rows])
    write(folder / "QQP" / "dev.tsv", head, qqp[rows:])
    rte = rows_of(Path(glue_dir) / "RTE" / "train.tsv")
    base = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]

    def mnli(i: int, r: dict, votes: int) -> list[str]:
        label = "entailment" if r["label"] == "entailment" else ("neutral" if i % 2 else "contradiction")
        return [str(i), str(i), f"{i}e", "fiction", "(x)", "(y)", "(X)", "(Y)", r["sentence1"], r["sentence2"],
                *([label] * votes), label]

    write(folder / "MNLI" / "train.tsv", [*base, "label1", "gold_label"],
          [mnli(i, r, 1) for i, r in enumerate(rte[:rows])])
    dev_head = [*base, *[f"label{k}" for k in range(1, 6)], "gold_label"]
    extra = rte[rows:rows + rows // 2]
    write(folder / "MNLI" / "dev_matched.tsv", dev_head, [mnli(i, r, 5) for i, r in enumerate(extra[::2])])
    write(folder / "MNLI" / "dev_mismatched.tsv", dev_head, [mnli(i, r, 5) for i, r in enumerate(extra[1::2])])
    qnli = rows_of(Path(glue_dir) / "QNLI" / "dev.tsv")
    head = ["index", "question", "sentence", "label"]
    body = [[str(i), r["question"], r["sentence"], r["label"]] for i, r in enumerate(qnli[:rows + rows // 4])]
    write(folder / "QNLI" / "train.tsv", head, body[:rows])
    write(folder / "QNLI" / "dev.tsv", head, body[rows:])
    return folder


def digest(split) -> dict:
    """A split's rows as one SHA-256 of its texts and labels (STS-B's scores to 4 decimals: the hub keeps them
    as float32), its row count and first row: equal digests, equal rows in the same order."""
    columns = {c: [round(x, 4) if isinstance(x, float) else x for x in list(split[c])]
               for c in ("text_a", "text_b", "label") if c in split.column_names}
    return {"rows": split.num_rows, "sha": hashlib.sha256(json.dumps(columns).encode()).hexdigest(),
            "first": {c: v[0] for c, v in columns.items()}}
