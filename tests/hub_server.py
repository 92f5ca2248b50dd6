"""A small Hugging Face Hub of the project's own, for testing `picli push` offline.

huggingface_hub ships no fake server, so this one implements exactly what its real client
calls during `picli push` with `HF_HUB_DISABLE_XET=1` (read from huggingface_hub 2.x's
hf_api.py, _commit_api.py and lfs.py):

    GET  /api/whoami-v2                                  who the bearer token belongs to
    POST /api/repos/create                               409 + {"url"} when it exists
    POST /api/validate-yaml                              the model card's front matter
    GET  /api/models/{id}[/revision/{rev}]               repo info (404 RepoNotFound / RevisionNotFound)
    GET  /api/models/{id}/refs                           branches, tags, pull requests
    POST /api/models/{id}/branch/{branch}                a branch from startingPoint (default main)
    POST /api/models/{id}/preupload/{rev}                "lfs" or "regular" per file, remote oid
    POST /{id}.git/info/lfs/objects/batch                LFS upload actions; none when already stored
    PUT  /lfs/{oid}                                      the LFS object itself (sha256-checked)
    POST /api/models/{id}/commit/{rev}                   ndjson commit; ?create_pr=1 opens refs/pr/N
    GET|HEAD /{id}/resolve/{rev}/{path}                  a file's bytes

Standard library only (PyYAML, a dependency of huggingface_hub, validates the YAML when it
is importable). Bound to 127.0.0.1 on a free port; repos, commits and objects are stored on
disk under `root`. Bearer tokens are checked on every API call, private repos answer 404 to
anyone else, and errors carry the X-Error-Code headers the client turns into typed errors.
Tests can make the next commit(s) fail (`fail_commits`) to interrupt an upload after the
LFS objects went up, answer a path with canned bytes (`canned`: a 200 that is not JSON, an
error whose text has newlines), and read `requests` / `lfs_puts` to see what the client sent.

Run it by hand (prints its URL):  python -m tests.hub_server /tmp/hub TOKEN
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".npz")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub stores larger files in LFS whatever their name
RELATIONS = {"adapter", "merge", "quantized", "finetune"}
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"


@dataclass
class Account:
    name: str
    orgs: list[str] = field(default_factory=list)
    write: bool = True


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self, root: Path, accounts: dict[str, Account]):
        self.root = Path(root)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self.accounts = accounts
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str]] = []
        self.lfs_puts: list[str] = []
        self.fail_commits = 0
        # path -> (status, body bytes, content type): answered instead of the real endpoint, to
        # play a server that is not quite the Hub (200 with HTML, an error text with newlines).
        self.canned: dict[str, tuple[int, bytes, str]] = {}
        self.server: http.server.ThreadingHTTPServer | None = None
        self.url = ""

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            fake = hub

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.url

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    # -- storage ------------------------------------------------------------------------

    def _meta_path(self, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_id.replace('/', '--')}.json"

    def load(self, repo_id: str) -> dict | None:
        path = self._meta_path(repo_id)
        return json.loads(path.read_text()) if path.is_file() else None

    def save(self, repo_id: str, meta: dict) -> None:
        path = self._meta_path(repo_id)
        path.with_suffix(".tmp").write_text(json.dumps(meta, indent=1))
        path.with_suffix(".tmp").replace(path)

    def store_object(self, data: bytes) -> str:
        oid = hashlib.sha256(data).hexdigest()
        target = self.root / "objects" / oid
        if not target.exists():
            target.write_bytes(data)
        return oid

    def has_object(self, oid: str) -> bool:
        return (self.root / "objects" / oid).is_file()

    def read_object(self, oid: str) -> bytes:
        return (self.root / "objects" / oid).read_bytes()

    @staticmethod
    def resolve(meta: dict, revision: str) -> str | None:
        revision = unquote(revision)
        if revision in meta["refs"]:
            return meta["refs"][revision]
        return revision if revision in meta["commits"] else None

    def commit(self, meta: dict, ref: str, message: str, files: dict) -> str:
        parent = meta["refs"].get(ref)
        oid = hashlib.sha1(json.dumps([parent, message, files, len(meta["commits"])], sort_keys=True)
                           .encode()).hexdigest()
        meta["commits"][oid] = {"parent": parent, "message": message, "files": files}
        meta["refs"][ref] = oid
        return oid

    # -- what tests read ----------------------------------------------------------------

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """path -> bytes of every file at a revision, as stored."""
        meta = self.load(repo_id)
        oid = self.resolve(meta, revision)
        return {path: self.read_object(entry["sha256"]) for path, entry in meta["commits"][oid]["files"].items()}

    def head_message(self, repo_id: str, revision: str = "main") -> str:
        meta = self.load(repo_id)
        return meta["commits"][self.resolve(meta, revision)]["message"]


class _Handler(http.server.BaseHTTPRequestHandler):
    fake: FakeHub
    server_version = "picli-fake-hub/1"

    def log_message(self, *args):  # quiet
        pass

    # -- plumbing -----------------------------------------------------------------------

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload=None, *, raw: bytes | None = None, error_code: str | None = None,
              error_message: str | None = None, headers: dict | None = None) -> None:
        body = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        headers = dict(headers or {})
        self.send_header("Content-Type", headers.pop("Content-Type", None)
                         or ("application/octet-stream" if raw is not None else "application/json"))
        self.send_header("Content-Length", str(len(body)))
        if error_code:
            self.send_header("X-Error-Code", error_code)
        if error_message:
            self.send_header("X-Error-Message", error_message)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _account(self) -> Account | None:
        header = self.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else None
        return self.fake.accounts.get(token) if token else None

    def _unauthorized(self) -> None:
        self._send(401, {"error": "Invalid credentials in Authorization header"},
                   error_message="Invalid credentials in Authorization header")

    def _repo_not_found(self) -> None:
        self._send(404, {"error": "Repository not found"}, error_code="RepoNotFound",
                   error_message="Repository not found")

    def _readable(self, meta: dict | None, account: Account | None) -> bool:
        if meta is None:
            return False
        return not meta["private"] or (account is not None and self._owner_ok(meta["namespace"], account))

    @staticmethod
    def _owner_ok(namespace: str, account: Account) -> bool:
        return namespace == account.name or namespace in account.orgs

    def _writable(self, meta: dict, account: Account | None) -> bool:
        return account is not None and account.write and self._owner_ok(meta["namespace"], account)

    def _dispatch(self, routes) -> None:
        parts = urlsplit(self.path)
        self.query = parse_qs(parts.query)
        body = self._body() if self.command in ("POST", "PUT") else b""
        with self.fake.lock:
            self.fake.requests.append((self.command, parts.path))
        canned = self.fake.canned.get(parts.path)
        if canned is not None:
            status, raw, content_type = canned
            return self._send(status, raw=raw, headers={"Content-Type": content_type})
        for pattern, handler in routes:
            match = re.fullmatch(pattern, parts.path)
            if match:
                with self.fake.lock:
                    return handler(self, body, **{k: unquote(v) for k, v in match.groupdict().items()})
        self._send(404, {"error": f"no route for {self.command} {parts.path}"})

    def do_GET(self):  # noqa: N802
        self._dispatch(GET_ROUTES)

    def do_HEAD(self):  # noqa: N802
        self._dispatch(GET_ROUTES)

    def do_POST(self):  # noqa: N802
        self._dispatch(POST_ROUTES)

    def do_PUT(self):  # noqa: N802
        self._dispatch(PUT_ROUTES)

    # -- endpoints ----------------------------------------------------------------------

    def whoami(self, body):
        account = self._account()
        if account is None:
            return self._unauthorized()
        role = "write" if account.write else "read"
        self._send(200, {"type": "user", "name": account.name,
                         "orgs": [{"name": org, "type": "org"} for org in account.orgs],
                         "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": role}}})

    def create_repo(self, body):
        account = self._account()
        if account is None:
            return self._unauthorized()
        payload = json.loads(body or b"{}")
        namespace = payload.get("organization") or account.name
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.fake.url}/{repo_id}"
        if not (account.write and self._owner_ok(namespace, account)):
            return self._send(403, {"error": f"You don't have the rights to create a model under {namespace}"},
                              error_message=f"You don't have the rights to create a model under {namespace}")
        if self.fake.load(repo_id) is not None:
            return self._send(409, {"error": "You already created this model repo", "url": url},
                              error_message="You already created this model repo")
        private = payload.get("visibility", "public") == "private" or bool(payload.get("private"))
        meta = {"id": repo_id, "namespace": namespace, "private": private, "refs": {}, "commits": {},
                "pull_requests": 0}
        # Like the Hub: a new repo's main holds one commit with .gitattributes.
        entry = {"sha256": self.fake.store_object(GITATTRIBUTES), "size": len(GITATTRIBUTES), "lfs": False,
                 "oid": git_blob_sha1(GITATTRIBUTES)}
        self.fake.commit(meta, "main", "initial commit", {".gitattributes": entry})
        self.fake.save(repo_id, meta)
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, body):
        content = json.loads(body or b"{}").get("content", "")
        match = re.match(r"^\s*---\r?\n([\s\S]*?)\r?\n---[ \t]*(\r?\n|$)", content)
        errors = []
        if match:
            try:
                import yaml
            except ImportError:
                yaml = None
            if yaml is not None:
                try:
                    data = yaml.safe_load(match.group(1)) or {}
                except yaml.YAMLError as exc:
                    data, errors = {}, [{"message": f"invalid YAML: {exc}"}]
                if not isinstance(data, dict):
                    errors.append({"message": "metadata must be a mapping"})
                else:
                    errors += _metadata_errors(data)
        if errors:
            return self._send(400, {"errors": errors, "warnings": []}, error_message="Invalid metadata")
        self._send(200, {"errors": [], "warnings": []})

    def repo_info(self, body, repo, rev=None):
        meta = self.fake.load(repo)
        if not self._readable(meta, self._account()):
            return self._repo_not_found()
        oid = self.fake.resolve(meta, rev or "main")
        if oid is None:
            return self._send(404, {"error": "Invalid rev id"}, error_code="RevisionNotFound",
                              error_message="Invalid rev id")
        files = meta["commits"][oid]["files"]
        self._send(200, {"id": repo, "modelId": repo, "author": meta["namespace"], "sha": oid,
                         "private": meta["private"], "gated": False, "disabled": False,
                         "siblings": [{"rfilename": path} for path in sorted(files)]})

    def refs(self, body, repo):
        meta = self.fake.load(repo)
        if not self._readable(meta, self._account()):
            return self._repo_not_found()
        def ref(name, oid):
            full = name if name.startswith("refs/") else f"refs/heads/{name}"
            return {"name": name, "ref": full, "targetCommit": oid}
        self._send(200, {"branches": [ref(n, o) for n, o in meta["refs"].items() if not n.startswith("refs/")],
                         "tags": [], "converts": [],
                         "pullRequests": [ref(n, o) for n, o in meta["refs"].items() if n.startswith("refs/pr/")]})

    def create_branch(self, body, repo, branch):
        meta = self.fake.load(repo)
        account = self._account()
        if not self._readable(meta, account):
            return self._repo_not_found()
        if not self._writable(meta, account):
            return self._send(403, {"error": "forbidden"}, error_message="You don't have write access")
        if branch in meta["refs"]:
            return self._send(409, {"error": f"Reference {branch} already exists"},
                              error_message=f"Reference {branch} already exists")
        start = json.loads(body or b"{}").get("startingPoint") or "main"
        oid = self.fake.resolve(meta, start)
        if oid is None:
            return self._send(404, {"error": "Invalid rev id"}, error_code="RevisionNotFound",
                              error_message="Invalid rev id")
        meta["refs"][branch] = oid
        self.fake.save(repo, meta)
        self._send(200, {})

    def preupload(self, body, repo, rev):
        meta = self.fake.load(repo)
        account = self._account()
        if not self._readable(meta, account):
            return self._repo_not_found()
        create_pr = self.query.get("create_pr") == ["1"]
        if not create_pr and not self._writable(meta, account):
            return self._send(403, {"error": "forbidden"}, error_message="You don't have write access")
        oid = self.fake.resolve(meta, rev)
        if oid is None:
            return self._send(404, {"error": "Invalid rev id"}, error_code="RevisionNotFound",
                              error_message="Invalid rev id")
        remote = meta["commits"][oid]["files"]
        answer = []
        for item in json.loads(body)["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] >= LFS_MIN_SIZE or b"\0" in sample
            existing = remote.get(item["path"])
            answer.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                           "oid": (existing["sha256"] if existing["lfs"] else existing["oid"]) if existing else None})
        self._send(200, {"files": answer, "commitOid": oid})

    def lfs_batch(self, body, repo):
        meta = self.fake.load(repo)
        account = self._account()
        if not self._readable(meta, account):
            return self._repo_not_found()
        payload = json.loads(body)
        objects = []
        for item in payload["objects"]:
            entry = {"oid": item["oid"], "size": item["size"], "authenticated": True}
            # Already stored (an earlier, interrupted push sent it): no action, the client skips it.
            if not self.fake.has_object(item["oid"]):
                entry["actions"] = {"upload": {"href": f"{self.fake.url}/lfs/{item['oid']}"}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_put(self, body, oid):
        if hashlib.sha256(body).hexdigest() != oid:
            return self._send(400, {"error": "sha256 mismatch"}, error_message="sha256 mismatch")
        self.fake.store_object(body)
        self.fake.lfs_puts.append(oid)
        self._send(200, {})

    def commit(self, body, repo, rev):
        meta = self.fake.load(repo)
        account = self._account()
        if not self._readable(meta, account):
            return self._repo_not_found()
        create_pr = self.query.get("create_pr") == ["1"]
        if not create_pr and not self._writable(meta, account):
            return self._send(403, {"error": "forbidden"}, error_message="You don't have write access")
        if self.fake.fail_commits > 0:
            self.fake.fail_commits -= 1
            return self._send(500, {"error": "Internal Error - simulated interruption"},
                              error_message="Internal Error - simulated interruption")
        base = self.fake.resolve(meta, rev)
        if base is None:
            return self._send(404, {"error": "Invalid rev id"}, error_code="RevisionNotFound",
                              error_message="Invalid rev id")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), {})
        if header.get("parentCommit") and header["parentCommit"] != base:
            return self._send(412, {"error": "parent commit is not the head"},
                              error_message="parent commit is not the head")
        files = dict(meta["commits"][base]["files"])
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                data = base64.b64decode(value["content"])
                files[value["path"]] = {"sha256": self.fake.store_object(data), "size": len(data), "lfs": False,
                                        "oid": git_blob_sha1(data)}
            elif key == "lfsFile":
                if not self.fake.has_object(value["oid"]):
                    return self._send(422, {"error": f"LFS object {value['oid']} was never uploaded"},
                                      error_message=f"LFS object for {value['path']} was never uploaded")
                files[value["path"]] = {"sha256": value["oid"], "size": value.get("size"), "lfs": True,
                                        "oid": value["oid"]}
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {path: entry for path, entry in files.items() if not path.startswith(prefix)}
        message = header.get("summary", "")
        pr_url = None
        ref = unquote(rev) if unquote(rev) in meta["refs"] else None
        if create_pr:
            meta["pull_requests"] += 1
            ref = f"refs/pr/{meta['pull_requests']}"
            meta["refs"][ref] = base
            pr_url = f"{self.fake.url}/{repo}/discussions/{meta['pull_requests']}"
        elif ref is None:
            return self._send(400, {"error": "can only commit to a branch"}, error_message="can only commit to a branch")
        oid = self.fake.commit(meta, ref, message, files)
        self.fake.save(repo, meta)
        self._send(200, {"commitUrl": f"{self.fake.url}/{repo}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": pr_url, "success": True})

    def resolve(self, body, repo, rev, path):
        meta = self.fake.load(repo)
        if not self._readable(meta, self._account()):
            return self._repo_not_found()
        oid = self.fake.resolve(meta, rev)
        if oid is None:
            return self._send(404, {"error": "Invalid rev id"}, error_code="RevisionNotFound",
                              error_message="Invalid rev id")
        entry = meta["commits"][oid]["files"].get(path)
        if entry is None:
            return self._send(404, {"error": "Entry not found"}, error_code="EntryNotFound",
                              error_message="Entry not found")
        data = self.fake.read_object(entry["sha256"])
        headers = {"X-Repo-Commit": oid, "ETag": f'"{entry["oid"]}"'}
        if entry["lfs"]:
            headers["X-Linked-Etag"] = f'"{entry["sha256"]}"'
            headers["X-Linked-Size"] = str(len(data))
        self._send(200, raw=data, headers=headers)


def _metadata_errors(data: dict) -> list[dict]:
    """The checks the Hub makes on the fields picli writes."""
    errors = []
    base = data.get("base_model")
    if base is not None:
        names = base if isinstance(base, list) else [base]
        if not all(isinstance(name, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) for name in names):
            errors.append({"message": f'"base_model" must be Hub model ids, got {base!r}'})
    relation = data.get("base_model_relation")
    if relation is not None and relation not in RELATIONS:
        errors.append({"message": f'"base_model_relation" must be one of {sorted(RELATIONS)}, got {relation!r}'})
    if relation is not None and base is None:
        errors.append({"message": '"base_model_relation" needs "base_model"'})
    tags = data.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(tag, str) for tag in tags)):
        errors.append({"message": '"tags" must be a list of strings'})
    for key in ("license", "library_name", "pipeline_tag"):
        if key in data and not isinstance(data[key], str):
            errors.append({"message": f'"{key}" must be a string'})
    return errors


GET_ROUTES = [
    (r"/api/whoami-v2", lambda h, b: h.whoami(b)),
    (rf"/api/models/{_REPO}", lambda h, b, repo: h.repo_info(b, repo)),
    (rf"/api/models/{_REPO}/revision/(?P<rev>.+)", lambda h, b, repo, rev: h.repo_info(b, repo, rev)),
    (rf"/api/models/{_REPO}/refs", lambda h, b, repo: h.refs(b, repo)),
    (rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", lambda h, b, repo, rev, path: h.resolve(b, repo, rev, path)),
]
POST_ROUTES = [
    (r"/api/repos/create", lambda h, b: h.create_repo(b)),
    (r"/api/validate-yaml", lambda h, b: h.validate_yaml(b)),
    (rf"/api/models/{_REPO}/branch/(?P<branch>.+)", lambda h, b, repo, branch: h.create_branch(b, repo, branch)),
    (rf"/api/models/{_REPO}/preupload/(?P<rev>.+)", lambda h, b, repo, rev: h.preupload(b, repo, rev)),
    (rf"/api/models/{_REPO}/commit/(?P<rev>.+)", lambda h, b, repo, rev: h.commit(b, repo, rev)),
    (rf"/{_REPO}\.git/info/lfs/objects/batch", lambda h, b, repo: h.lfs_batch(b, repo)),
]
PUT_ROUTES = [
    (r"/lfs/(?P<oid>[0-9a-f]{64})", lambda h, b, oid: h.lfs_put(b, oid)),
]


# A `sitecustomize` for subprocesses (put its folder on PYTHONPATH): every connection is
# logged to $PICLI_NETGUARD_LOG, a non-loopback one is refused, and with
# PICLI_NETGUARD_STRICT=1 every connection is refused, which is how a test proves that a
# command made no network call at all. Name lookups of non-loopback hosts are refused too.
NETWORK_GUARD = r'''
import ipaddress, os, socket

_log_path = os.environ.get("PICLI_NETGUARD_LOG")
_strict = os.environ.get("PICLI_NETGUARD_STRICT") == "1"
_connect = socket.socket.connect
_getaddrinfo = socket.getaddrinfo


def _loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _note(kind, host):
    if _log_path:
        with open(_log_path, "a") as handle:
            handle.write(f"{kind} {host}\n")


def _guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else None
    if host is not None:
        _note("connect", host)
        if _strict or not _loopback(host):
            raise ConnectionRefusedError(f"network guard: connection to {host} refused in tests")
    return _connect(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if isinstance(host, bytes):
        host = host.decode()
    if host is not None and not _loopback(str(host)):
        _note("resolve", host)
        raise socket.gaierror(f"network guard: name lookup of {host} refused in tests")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded_connect
socket.getaddrinfo = _guarded_getaddrinfo
'''


def write_network_guard(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(NETWORK_GUARD)
    return directory


if __name__ == "__main__":
    import sys
    import time

    hub = FakeHub(Path(sys.argv[1]), {sys.argv[2]: Account("tester", ["org"])})
    print(hub.start(), flush=True)
    while True:
        time.sleep(3600)
