"""Checkpoint and vocabulary downloads (songflow.checkpoint.hub), against a local stand-in for the
Hugging Face Hub.

No network: a small HTTP server on 127.0.0.1 serves a fake model repo built from the golden tiny
checkpoint, with the two endpoints ``snapshot_download`` uses (``/api/models/{repo}/revision/{rev}`` and
``/{repo}/resolve/{rev}/{path}`` with the ETag / X-Repo-Commit / Content-Length headers), and the lyric
vocabulary as a plain file.
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

import pytest

from songflow.checkpoint.acestep_v1 import CHECKPOINT_FILES, CHECKPOINT_FOLDERS, load_checkpoint
from songflow.checkpoint.hub import (
    DEFAULT_REPO_ID,
    VOCAB_SHA256,
    VOCAB_SIZE_BYTES,
    VOCAB_URL,
    checkpoint_allow_patterns,
    download_checkpoint,
    fetch_lyric_vocab,
    find_lyric_vocab,
)
from songflow.errors import CheckpointError

REPO_ID = "test-org/tiny-ace-step"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Files served under the repo id, plus extra plain URLs; records every request."""

    def __init__(self, repo_files: dict[str, bytes], plain_files: dict[str, bytes]):
        self.repo_files = repo_files
        self.plain_files = plain_files
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hub.handle(self, head=False)

            def do_HEAD(self) -> None:
                hub.handle(self, head=True)

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handle(self, request: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = unquote(urlparse(request.path).path)
        self.requests.append((request.command, path))
        info = re.fullmatch(r"/api/models/(.+)/revision/([^/]+)", path)
        resolve = re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", path)
        if info and info.group(1) == REPO_ID:
            body = json.dumps(
                {
                    "id": REPO_ID,
                    "sha": COMMIT,
                    "siblings": [{"rfilename": f} for f in sorted(self.repo_files)],
                }
            ).encode()
            self._send(request, 200, body, {"Content-Type": "application/json"}, head)
        elif resolve and resolve.group(1) == REPO_ID and resolve.group(3) in self.repo_files:
            data = self.repo_files[resolve.group(3)]
            headers = {
                "Content-Type": "application/octet-stream",
                "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                "X-Repo-Commit": COMMIT,
            }
            self._send(request, 200, data, headers, head)
        elif path in self.plain_files:
            self._send(request, 200, self.plain_files[path], {"Content-Type": "application/json"}, head)
        else:
            code = "RepoNotFound" if info or resolve and resolve.group(1) != REPO_ID else "EntryNotFound"
            self._send(request, 404, b"{}", {"X-Error-Code": code, "X-Error-Message": "not here"}, head)

    @staticmethod
    def _send(request, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if not head:
            request.wfile.write(body)

    def gets(self, suffix: str) -> int:
        return sum(1 for method, path in self.requests if method == "GET" and path.endswith(suffix))


@pytest.fixture()
def hub_env(monkeypatch, tmp_path):
    """Online mode, a private HF_HOME, no proxies for 127.0.0.1."""
    import huggingface_hub.constants as hf_constants
    from huggingface_hub.utils import reset_sessions

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_ENABLE_HF_TRANSFER", False)
    reset_sessions()
    yield
    reset_sessions()


@pytest.fixture()
def fake_hub(golden_models_dir, vocab_path, hub_env):
    repo_files = {
        str(p.relative_to(golden_models_dir)): p.read_bytes()
        for p in sorted(golden_models_dir.rglob("*"))
        if p.is_file()
    }
    # files a download must not fetch: a quantized pickle variant and repo clutter
    repo_files["ace_step_transformer/diffusion_pytorch_model_int4wo.bin"] = b"\x80\x04 large pickle"
    repo_files["README.md"] = b"# model card"
    vocab = vocab_path.read_bytes()
    hub = FakeHub(
        repo_files, {"/vocab.json": vocab, "/tampered/vocab.json": vocab.replace(b"[verse]", b"[versE]")}
    )
    hub.thread.start()
    yield hub
    hub.server.shutdown()
    hub.server.server_close()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_download_checkpoint_from_hub_layout(fake_hub, golden_models_dir, tmp_path):
    root = download_checkpoint(REPO_ID, tmp_path / "ckpt", endpoint=fake_hub.url)
    assert root == (tmp_path / "ckpt").resolve()
    for folder, names in CHECKPOINT_FILES.items():
        for name in names:
            assert (root / folder / name).read_bytes() == (golden_models_dir / folder / name).read_bytes()
    assert (root / "ace_step_transformer" / "lyric_encoder_config.json").is_file()  # optional file
    # only the checkpoint files were fetched (no quantized .bin, no README, no init.json)
    assert not (root / "ace_step_transformer" / "diffusion_pytorch_model_int4wo.bin").exists()
    assert not (root / "README.md").exists() and not (root / "init.json").exists()
    assert fake_hub.gets(".bin") == 0
    ckpt = load_checkpoint(root, dtype="float32", device="cpu")
    assert ckpt.text_encoder is not None and ckpt.root == root
    # a second call finds everything up to date and downloads nothing again
    n_gets = fake_hub.gets(".safetensors")
    assert download_checkpoint(REPO_ID, tmp_path / "ckpt", endpoint=fake_hub.url) == root
    assert fake_hub.gets(".safetensors") == n_gets
    # offline with a complete copy: the copy is used
    assert download_checkpoint(REPO_ID, tmp_path / "ckpt", endpoint=_closed_port_url()) == root


def test_download_errors_are_friendly(fake_hub, tmp_path):
    with pytest.raises(CheckpointError, match="cannot reach .* no complete copy"):
        download_checkpoint(REPO_ID, tmp_path / "offline", endpoint=_closed_port_url())
    with pytest.raises(CheckpointError, match="not found"):
        download_checkpoint("test-org/no-such-model", tmp_path / "missing", endpoint=fake_hub.url)


def test_allow_patterns_cover_the_checkpoint_files():
    patterns = checkpoint_allow_patterns()
    assert {p.split("/")[0] for p in patterns} == set(CHECKPOINT_FOLDERS)
    assert all(f"{folder}/{name}" in patterns for folder, names in CHECKPOINT_FILES.items() for name in names)
    assert DEFAULT_REPO_ID == "ACE-Step/ACE-Step-v1-3.5B"


def test_fetch_lyric_vocab(fake_hub, vocab_path, tmp_path):
    dest = fetch_lyric_vocab(tmp_path / "ckpt", url=fake_hub.url + "/vocab.json")
    assert dest == tmp_path / "ckpt" / "vocab.json"
    assert dest.read_bytes() == vocab_path.read_bytes()
    assert find_lyric_vocab(tmp_path / "ckpt") == dest
    # already there with the right hash: no new request
    n = len(fake_hub.requests)
    assert fetch_lyric_vocab(tmp_path / "ckpt", url=fake_hub.url + "/vocab.json") == dest
    assert len(fake_hub.requests) == n


def test_fetch_lyric_vocab_rejects_a_wrong_hash(fake_hub, tmp_path):
    dest_dir = tmp_path / "ckpt"
    with pytest.raises(CheckpointError, match="sha256 .* expected c2a66ea4.*nothing written"):
        fetch_lyric_vocab(dest_dir, url=fake_hub.url + "/tampered/vocab.json")
    assert not dest_dir.exists() or list(dest_dir.iterdir()) == []


def test_fetch_lyric_vocab_offline(hub_env, tmp_path):
    with pytest.raises(CheckpointError, match="cannot download the lyric vocabulary"):
        fetch_lyric_vocab(tmp_path, url=_closed_port_url() + "/vocab.json")
    assert not (tmp_path / "vocab.json").exists()


def test_pinned_vocab_constants(vocab_path):
    data = vocab_path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == VOCAB_SHA256 and len(data) == VOCAB_SIZE_BYTES
    assert VOCAB_URL.endswith("/ace-step/ACE-Step/d612523/acestep/models/lyrics_utils/vocab.json")


def test_find_lyric_vocab(tmp_path):
    assert find_lyric_vocab(tmp_path) is None
    (tmp_path / "ace_step_transformer").mkdir()
    nested = tmp_path / "ace_step_transformer" / "vocab.json"
    nested.write_text("{}")
    assert find_lyric_vocab(tmp_path) == nested
    top = tmp_path / "vocab.json"
    top.write_text("{}")
    assert find_lyric_vocab(tmp_path) == top
    assert isinstance(find_lyric_vocab(str(tmp_path)), Path)
