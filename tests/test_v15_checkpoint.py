"""ACE-Step 1.5 checkpoint folders (songflow.checkpoint.acestep_v15), the family declaration, the random
1.5 checkpoint writer and the 1.5 downloads (against a local stand-in for the Hugging Face Hub).

Broken folders are built in tmp_path from symlinks to the read-only fixture files.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import shutil
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch
from safetensors.torch import load_file, save_file

from songflow.checkpoint import acestep_v15 as v15
from songflow.checkpoint.hub import download_v15
from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint
from songflow.errors import CheckpointError
from songflow.families import FAMILIES, describe_folder, family_for
from songflow.families.acestep_v1 import ACESTEP_V1
from songflow.families.acestep_v15 import ACESTEP_V15
from songflow.interfaces.cli import main
from songflow.models.acestep_v15.config import AceStep15Config

TURBO, BASE = "acestep-v15-turbo", "acestep-v15-base"
SHARED = ("vae", "Qwen3-Embedding-0.6B")


def _header_count(path: Path) -> int:
    """Number of values a safetensors file holds, from its raw JSON header (independent of our reader)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def _link_root(
    src: Path, dst: Path, *, skip: tuple[str, ...] = (), dit_files: tuple[str, ...] | None = None
) -> Path:
    """A copy of the fixture root ``src`` at ``dst`` made of symlinks, without the folders ``skip``; with
    ``dit_files`` the turbo folder is a real folder linking only those files."""
    dst.mkdir(parents=True)
    for child in src.iterdir():
        if child.name in skip:
            continue
        if child.name == TURBO and dit_files is not None:
            (dst / TURBO).mkdir()
            for name in dit_files:
                (dst / TURBO / name).symlink_to(child / name)
        else:
            (dst / child.name).symlink_to(child, target_is_directory=True)
    return dst


def _copy_dit(src: Path, dst: Path) -> Path:
    """A writable copy of a DiT folder (config, weights, silence latent)."""
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    return dst


# --------------------------------------------------------------------------------------------------------
# layout and validation
# --------------------------------------------------------------------------------------------------------


def test_v15_fixture_root_and_dit_folder_resolve_and_validate(golden_v15_checkpoints):
    root = golden_v15_checkpoints.resolve()
    layout = v15.validate_v15(root)
    assert layout == v15.resolve_v15_layout(root)
    assert (layout.root, layout.dit_dir) == (root, root / TURBO)  # several DiT folders: the turbo default
    assert (layout.vae_dir, layout.text_encoder_dir) == (root / "vae", root / "Qwen3-Embedding-0.6B")
    assert layout.lm_dir == root / "acestep-5Hz-lm-1.7B"
    assert v15.validate_v15(root / TURBO) == layout  # one DiT folder: the shared parts from its parent
    base = v15.validate_v15(root, dit=BASE)
    assert base.dit_dir == root / BASE and v15.validate_v15(root / BASE) == base
    assert [p.name for p in v15.dit_folders(root)] == [TURBO, BASE]
    with pytest.raises(CheckpointError, match="cannot also be"):
        v15.resolve_v15_layout(root / TURBO, dit=BASE)


def test_v15_variant_is_told_apart_by_config(golden_v15_checkpoints, tmp_path):
    turbo = v15.read_v15_config(golden_v15_checkpoints / TURBO)
    base = v15.read_v15_config(golden_v15_checkpoints / BASE)
    raw = {n: json.loads((golden_v15_checkpoints / n / "config.json").read_text()) for n in (TURBO, BASE)}
    assert (raw[TURBO]["is_turbo"], raw[BASE]["is_turbo"]) == (True, False)
    assert (v15.dit_variant(turbo), v15.dit_variant(base)) == ("turbo", "base")
    assert not v15.is_xl(turbo) and not v15.is_xl(base)
    # the name does not decide: the base weights under a neutral folder name are found by model_type
    root = _link_root(golden_v15_checkpoints, tmp_path / "ckpt", skip=(TURBO, BASE))
    (root / "my-finetune").symlink_to(golden_v15_checkpoints / BASE, target_is_directory=True)
    layout = v15.validate_v15(root)
    assert layout.dit_dir == root / "my-finetune"
    assert family_for(root) is ACESTEP_V15 and describe_folder(root).variant == "base"


def test_v15_info_prints_family_variant_and_header_counts(golden_v15_checkpoints, capsys):
    assert main(["info", str(golden_v15_checkpoints)]) == 0
    out = capsys.readouterr().out
    assert "family: acestep-v15 (ACE-Step 1.5)" in out and "variant: turbo" in out
    files = {
        "dit": golden_v15_checkpoints / TURBO / "model.safetensors",
        "vae": golden_v15_checkpoints / "vae" / "diffusion_pytorch_model.safetensors",
        "text_encoder": golden_v15_checkpoints / "Qwen3-Embedding-0.6B" / "model.safetensors",
        "lm": golden_v15_checkpoints / "acestep-5Hz-lm-1.7B" / "model.safetensors",
    }
    counts = {name: _header_count(file) for name, file in files.items()}
    for name, n in counts.items():
        assert re.search(
            rf"^\s+{name}\s+{re.escape(files[name].parent.name)}\s.*\s{n:,} params", out, re.M
        ), name
    assert f"total:  {sum(counts.values()):,} params" in out
    report = describe_folder(golden_v15_checkpoints / BASE)
    assert report.variant == "base" and report.components[0].folder == BASE
    assert report.n_params == sum(counts.values()) - counts["dit"] + _header_count(
        golden_v15_checkpoints / BASE / "model.safetensors"
    )


@pytest.mark.parametrize(
    ("skip", "dit_files", "named"),
    [
        (("vae",), None, "missing folder: vae/"),
        (("Qwen3-Embedding-0.6B",), None, "missing folder: Qwen3-Embedding-0.6B/"),
        ((), ("config.json", "silence_latent.pt"), f"missing weights: {TURBO}/model.safetensors"),
        ((), ("config.json", "model.safetensors"), f"missing file: {TURBO}/silence_latent.pt"),
        ((), ("model.safetensors", "silence_latent.pt"), f"missing file: {TURBO}/config.json"),
    ],
)
def test_v15_missing_parts_are_named(golden_v15_checkpoints, tmp_path, skip, dit_files, named):
    root = _link_root(golden_v15_checkpoints, tmp_path / "ckpt", skip=skip, dit_files=dit_files)
    for path in (root, root / TURBO):
        with pytest.raises(CheckpointError) as info:
            v15.validate_v15(path)
        message = str(info.value)
        assert named in message and "is not a complete ACE-Step 1.5 checkpoint" in message
        assert f"songflow download --model {TURBO} --dir {root}" in message
    with pytest.raises(CheckpointError, match=re.escape(named)):
        describe_folder(root)  # the registry's full check names it too


def test_v15_missing_root_and_unknown_dit_name(golden_v15_checkpoints, tmp_path):
    with pytest.raises(CheckpointError, match=f"(?s)does not exist.*songflow download --model {TURBO}"):
        v15.validate_v15(tmp_path / "nope")
    with pytest.raises(
        CheckpointError,
        match=f"(?s)missing folder: acestep-v15-sft/.*other DiT folders here: {TURBO}, {BASE}",
    ):
        v15.validate_v15(golden_v15_checkpoints, dit="acestep-v15-sft")


def _malicious_pickle(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when unpickled."""

    class Trap:
        def __reduce__(self):
            return (Path.touch, (marker,))

    return pickle.dumps(Trap(), protocol=2)


def test_v15_pickle_weights_are_refused_never_read(golden_v15_checkpoints, tmp_path):
    root = _link_root(
        golden_v15_checkpoints, tmp_path / "ckpt", dit_files=("config.json", "silence_latent.pt")
    )
    marker = tmp_path / "unpickled"
    (root / TURBO / "pytorch_model.bin").write_bytes(_malicious_pickle(marker))
    with pytest.raises(CheckpointError, match=r"found pytorch_model\.bin: pickle weights are never read"):
        v15.validate_v15(root)
    with pytest.raises(CheckpointError, match=r"model\.safetensors .*missing \(found pytorch_model\.bin"):
        v15.load_v15_dit(root / TURBO)
    assert not marker.exists()


def test_v15_silence_latent_is_read_weights_only_and_checked(golden_v15_checkpoints, tmp_path):
    dit = golden_v15_checkpoints / TURBO
    stored = torch.load(dit / "silence_latent.pt", weights_only=True)
    latent = v15.load_silence_latent(dit)
    channels = v15.read_v15_config(dit).audio_acoustic_hidden_dim
    assert latent.shape == (1, stored.shape[2], channels) and torch.equal(latent, stored.transpose(1, 2))
    folder = _copy_dit(dit, tmp_path / TURBO)
    marker = tmp_path / "unpickled"
    cases = {
        "weights_only": _malicious_pickle(marker),
        "holds dict": {"latent": stored},
        r"holds a tensor of shape \[1, 1500, 8\]": stored.transpose(1, 2).contiguous(),
        "damaged": b"\x80\x02 truncated",
    }
    for pattern, content in cases.items():
        file = folder / "silence_latent.pt"
        if isinstance(content, bytes):
            file.write_bytes(content)
        else:
            torch.save(content, file)
        with pytest.raises(CheckpointError, match=pattern):
            v15.load_silence_latent(folder)
    assert not marker.exists()
    (folder / "silence_latent.pt").unlink()
    with pytest.raises(CheckpointError, match="silence_latent.pt is missing"):
        v15.load_silence_latent(folder)


# --------------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------------


def test_v15_fixture_components_load_strictly(golden_v15_checkpoints):
    ckpt = v15.load_v15_checkpoint(golden_v15_checkpoints, dtype="float32", device="cpu")
    weights = load_file(str(golden_v15_checkpoints / TURBO / "model.safetensors"))
    state = ckpt.dit.state_dict()
    assert set(state) == set(weights)
    assert all(torch.equal(state[k], v.float()) for k, v in weights.items())
    assert ckpt.dit.config.variant == "turbo" and not ckpt.dit.training
    assert ckpt.silence_latent.shape[-1] == ckpt.dit.config.audio_acoustic_hidden_dim
    assert ckpt.vae.latent_channels == ckpt.dit.config.audio_acoustic_hidden_dim
    assert ckpt.text_encoder.dim == ckpt.dit.config.text_hidden_dim
    assert ckpt.text_encoder.pad_token_id == ckpt.text_encoder.tokenizer.convert_tokens_to_ids(
        "<|endoftext|>"
    )
    assert v15.load_v15_dit(golden_v15_checkpoints / BASE).config.variant == "base"


def test_v15_bad_dit_folders_give_clear_errors(golden_v15_checkpoints, tmp_path):
    folder = _copy_dit(golden_v15_checkpoints / TURBO, tmp_path / TURBO)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(
        CheckpointError, match=r"(?s)model\.safetensors does not match AceStep15DiT.*shape mismatches"
    ):
        v15.load_v15_dit(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"(?s)config\.json.*not valid JSON"):
        v15.load_v15_dit(folder)
    (folder / "config.json").write_text(json.dumps(config))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is damaged or incomplete"):
        v15.load_v15_dit(folder)


def test_v15_sharded_weights_load_like_one_file(golden_v15_checkpoints, tmp_path):
    root = _link_root(
        golden_v15_checkpoints, tmp_path / "ckpt", dit_files=("config.json", "silence_latent.pt")
    )
    weights = load_file(str(golden_v15_checkpoints / TURBO / "model.safetensors"))
    keys = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: weights[k] for k in part}, str(root / TURBO / name))
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (root / TURBO / "model.safetensors.index.json").write_text(json.dumps(index))
    dit = v15.load_v15_dit(v15.validate_v15(root).dit_dir)
    assert all(torch.equal(dit.state_dict()[k], v.float()) for k, v in weights.items())
    assert describe_folder(root).components[0].n_params == _header_count(
        golden_v15_checkpoints / TURBO / "model.safetensors"
    )
    (root / TURBO / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=f"missing shard: {TURBO}/model-00002-of-00002.safetensors"):
        v15.validate_v15(root)


# --------------------------------------------------------------------------------------------------------
# random checkpoints and the family registry
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_v15(tmp_path_factory) -> Path:
    return build_random_v15_checkpoint(tmp_path_factory.mktemp("v15") / "checkpoints", seed=3)


def test_v15_random_checkpoint_loads_and_is_recognised(random_v15, tiny_ckpt):
    assert sorted(p.name for p in random_v15.iterdir()) == sorted((TURBO, *SHARED))
    assert list(FAMILIES) == ["acestep-v1", "acestep-v15"]
    assert family_for(random_v15) is ACESTEP_V15 and family_for(random_v15 / TURBO) is ACESTEP_V15
    assert family_for(tiny_ckpt) is ACESTEP_V1
    assert not ACESTEP_V15.recognises(tiny_ckpt) and not ACESTEP_V1.recognises(random_v15)
    ckpt = v15.load_v15_checkpoint(random_v15)
    assert ckpt.dit.config.to_dict() == AceStep15Config.tiny().to_dict()
    stored = torch.load(random_v15 / TURBO / "silence_latent.pt", weights_only=True)
    assert stored.shape[:2] == (1, ckpt.dit.config.audio_acoustic_hidden_dim)  # saved [1, C, T_s]
    assert {str(v.dtype) for v in load_file(str(random_v15 / TURBO / "model.safetensors")).values()} == {
        "torch.bfloat16"
    }
    ids, _ = ckpt.text_encoder.tokenize_captions(["la <|endoftext|>"])
    assert ids[0, -1] == ckpt.text_encoder.pad_token_id
    report = describe_folder(random_v15)
    assert report.variant == "turbo" and [c.name for c in report.components] == ["dit", "vae", "text_encoder"]
    assert report.components[0].n_params == sum(p.numel() for p in ckpt.dit.parameters())


def test_v15_random_base_and_xl_shaped_folders_load(tmp_path):
    root = build_random_v15_checkpoint(tmp_path / "base", variant="base", dit_dtype=torch.float32)
    assert v15.load_v15_dit(root / BASE).config.variant == "base"
    wide = AceStep15Config.tiny(
        hidden_size=96, encoder_hidden_size=64, encoder_intermediate_size=128,
        encoder_num_attention_heads=4, encoder_num_key_value_heads=2,
    )  # fmt: skip
    root = build_random_v15_checkpoint(tmp_path / "xl", config=wide, variant="turbo")
    layout = v15.validate_v15(root)
    assert layout.dit_name == "acestep-v15-xl-turbo"
    dit = v15.load_v15_dit(layout.dit_dir)
    assert v15.is_xl(dit.config) and dit.config.to_dict() == wide.to_dict()
    assert dit.null_condition_emb.shape[-1] == wide.encoder_hidden_size
    assert describe_folder(root).variant == "xl-turbo"


# --------------------------------------------------------------------------------------------------------
# downloads, against a local stand-in for the Hub
# --------------------------------------------------------------------------------------------------------

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


class ReposHub:
    """Serves several fake repos ``{repo_id: {path: bytes}}`` with the two endpoints ``snapshot_download``
    uses; records every request."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hub.handle(self, head=False)

            def do_HEAD(self) -> None:
                hub.handle(self, head=True)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handle(self, request: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = unquote(urlparse(request.path).path)
        self.requests.append((request.command, path))
        info = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        repo = self.repos.get((info or resolve).group(1)) if (info or resolve) else None
        if info and repo is not None:
            listing = {
                "id": info.group(1),
                "sha": COMMIT,
                "siblings": [{"rfilename": f} for f in sorted(repo)],
            }
            self._send(request, 200, json.dumps(listing).encode(), {"Content-Type": "application/json"}, head)
        elif resolve and repo is not None and resolve.group(3) in repo:
            data = repo[resolve.group(3)]
            headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": COMMIT}
            self._send(request, 200, data, {"Content-Type": "application/octet-stream", **headers}, head)
        else:
            code = "RepoNotFound" if repo is None else "EntryNotFound"
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

    def fetched(self, repo_id: str) -> set[str]:
        prefix = f"/{repo_id}/resolve/"
        return {p.split("/", 5)[-1] for m, p in self.requests if m == "GET" and p.startswith(prefix)}


def _files(folder: Path, prefix: str = "") -> dict[str, bytes]:
    """``{relative path: bytes}`` of the files under ``folder`` (huggingface_hub's ``.cache`` left out)."""
    files = (
        p for p in sorted(folder.rglob("*")) if p.is_file() and ".cache" not in p.relative_to(folder).parts
    )
    return {prefix + str(p.relative_to(folder)): p.read_bytes() for p in files}


@pytest.fixture()
def v15_hub(golden_v15_checkpoints, monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants
    from huggingface_hub.utils import reset_sessions

    for key, value in {
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": "0",
        "NO_PROXY": "127.0.0.1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    reset_sessions()
    main_repo: dict[str, bytes] = {}
    for name in (TURBO, *SHARED, "acestep-5Hz-lm-1.7B"):
        main_repo.update(_files(golden_v15_checkpoints / name, f"{name}/"))
    # what a download must skip: the modeling code, a pickle, repo clutter
    main_repo[f"{TURBO}/modeling_acestep_v15_turbo.py"] = b"raise SystemExit('never run')\n"
    main_repo[f"{TURBO}/pytorch_model.bin"] = b"\x80\x04 pickle"
    main_repo["README.md"] = b"# model card"
    base_repo = _files(golden_v15_checkpoints / BASE)
    base_repo["modeling_acestep_v15_base.py"] = b"raise SystemExit('never run')\n"
    hub = ReposHub({v15.MAIN_REPO_ID: main_repo, v15.SUBMODEL_REPO_IDS[BASE]: base_repo})
    hub.thread.start()
    yield hub
    hub.server.shutdown()
    hub.server.server_close()
    reset_sessions()


def test_v15_repo_ids_are_the_official_ones():
    assert v15.MAIN_REPO_ID == "ACE-Step/Ace-Step1.5"
    assert v15.MAIN_REPO_FOLDERS == (TURBO, "vae", "Qwen3-Embedding-0.6B", "acestep-5Hz-lm-1.7B")
    assert v15.SUBMODEL_REPO_IDS[BASE] == "ACE-Step/acestep-v15-base"
    assert v15.SUBMODEL_REPO_IDS["acestep-v15-xl-turbo"] == "ACE-Step/acestep-v15-xl-turbo"
    assert v15.SUBMODEL_REPO_IDS["acestep-5Hz-lm-4B"] == "ACE-Step/acestep-5Hz-lm-4B"
    assert TURBO not in v15.SUBMODEL_REPO_IDS and set(v15.DIT_FOLDERS) - {TURBO} <= set(v15.SUBMODEL_REPO_IDS)


def test_v15_download_into_the_official_layout(v15_hub, golden_v15_checkpoints, tmp_path):
    target = tmp_path / "checkpoints"
    root = download_v15(TURBO, target, endpoint=v15_hub.url)
    assert root == target.resolve() and sorted(
        p.name for p in root.iterdir() if p.name != ".cache"
    ) == sorted((TURBO, *SHARED))  # no LM unless asked for
    for name in (TURBO, *SHARED):
        assert _files(root / name) == _files(golden_v15_checkpoints / name)
    fetched = v15_hub.fetched(v15.MAIN_REPO_ID)
    assert not any(f.endswith((".py", ".bin", ".md")) for f in fetched)
    assert v15.load_v15_dit(root / TURBO).config.variant == "turbo"
    # another DiT comes from its own repo into its own folder; the shared parts are not fetched again
    n_main = len(fetched)
    root = download_v15(BASE, target, endpoint=v15_hub.url)
    assert _files(root / BASE) == _files(golden_v15_checkpoints / BASE)
    assert v15_hub.fetched(v15.SUBMODEL_REPO_IDS[BASE]) == set(_files(golden_v15_checkpoints / BASE))
    assert len(v15_hub.fetched(v15.MAIN_REPO_ID)) == n_main
    assert v15.validate_v15(root, dit=BASE).dit_dir == root / BASE
    assert (
        download_v15(TURBO, target, lm="acestep-5Hz-lm-1.7B", endpoint=v15_hub.url)
        .joinpath("acestep-5Hz-lm-1.7B", "model.safetensors")
        .is_file()
    )


def test_v15_download_errors(v15_hub, tmp_path):
    with pytest.raises(CheckpointError, match="unknown ACE-Step 1.5 DiT 'acestep-v15-large'"):
        download_v15("acestep-v15-large", tmp_path, endpoint=v15_hub.url)
    with pytest.raises(CheckpointError, match="repository ACE-Step/acestep-v15-sft not found"):
        download_v15("acestep-v15-sft", tmp_path / "sft", endpoint=v15_hub.url)
