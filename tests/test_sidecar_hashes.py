"""Weight hashes in the sidecar (issue 15.5): ``weights_sha256`` pins each weight file of each component,
keyed by component and file name (no machine path); ``--from`` on another folder says in one line whether
it holds the same weights (a warning when not, an error with ``--strict-weights``); hashes are cached per
(absolute path, size, mtime_ns) and the cache notices a changed file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from songflow.interfaces import sidecar as sc


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    """Every test hashes into its own cache folder (never the user's ~/.cache)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="module")
def turbo_root(tmp_path_factory) -> Path:
    from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint

    return build_random_v15_checkpoint(tmp_path_factory.mktemp("v15h") / "checkpoints", seed=0)


def _copy(root: Path, where: Path) -> Path:
    """An identical checkpoint folder elsewhere (another machine's --checkpoint)."""
    return Path(shutil.copytree(root, where / "checkpoints"))


def _counting(monkeypatch) -> list[str]:
    """Record every file the hasher actually reads."""
    reads: list[str] = []
    real = sc.file_sha256

    def counted(path):
        reads.append(str(path))
        return real(path)

    monkeypatch.setattr(sc, "file_sha256", counted)
    return reads


def _flip_byte(path: Path, keep_mtime: bool = False) -> None:
    """Change one byte in the middle of ``path`` (same size); a new mtime unless ``keep_mtime``."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    mtime_ns = stat.st_mtime_ns if keep_mtime else stat.st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stat.st_atime_ns, mtime_ns))


def test_hashes_are_per_component_and_file_name_with_no_machine_path(turbo_root, tmp_path):
    hashes = sc.checkpoint_weight_hashes(turbo_root)
    assert set(hashes) == {"dit", "vae", "text_encoder"}  # no LM folder here
    assert set(hashes["dit"]) == {"model.safetensors", "silence_latent.pt"}
    assert hashes["dit"]["model.safetensors"] == sc.file_sha256(
        turbo_root / "acestep-v15-turbo" / "model.safetensors"
    )
    assert str(tmp_path) not in json.dumps(hashes) and str(turbo_root) not in json.dumps(hashes)


def test_identical_folders_have_the_same_weights(turbo_root, tmp_path):
    other = _copy(turbo_root, tmp_path)
    recorded = {"weights_sha256": sc.checkpoint_weight_hashes(turbo_root)}
    same, line = sc.weights_verdict(recorded, other, "a.json")
    assert same and line == "same weights as recorded in a.json"


def test_one_changed_byte_names_the_component(turbo_root, tmp_path):
    other = _copy(turbo_root, tmp_path)
    recorded = {"weights_sha256": sc.checkpoint_weight_hashes(turbo_root)}
    _flip_byte(other / "vae" / "diffusion_pytorch_model.safetensors")
    same, line = sc.weights_verdict(recorded, other, "a.json")
    assert not same
    assert (
        line == "the weights differ from those recorded in a.json: vae (diffusion_pytorch_model.safetensors)"
    )
    assert "\n" not in line


def test_the_cache_is_used_and_invalidated_by_a_change(turbo_root, tmp_path, monkeypatch):
    other = _copy(turbo_root, tmp_path)
    reads = _counting(monkeypatch)
    first = sc.checkpoint_weight_hashes(other)
    assert len(reads) == 4  # dit (2 files), vae, text encoder: each read once
    cache = json.loads(sc.hash_cache_path().read_text())
    assert str((other / "vae" / "diffusion_pytorch_model.safetensors").absolute()) in cache
    reads.clear()
    assert sc.checkpoint_weight_hashes(other) == first and reads == []  # the second run reads nothing
    dit = other / "acestep-v15-turbo" / "model.safetensors"
    _flip_byte(dit)  # same size, new mtime: the cache entry no longer applies
    changed = sc.checkpoint_weight_hashes(other)
    assert reads == [str(dit.absolute())]
    assert changed["dit"]["model.safetensors"] != first["dit"]["model.safetensors"]
    assert {k: v for k, v in changed.items() if k != "dit"} == {k: v for k, v in first.items() if k != "dit"}


def test_the_cache_key_is_path_size_and_mtime(turbo_root, tmp_path, monkeypatch):
    """A change that keeps size and mtime_ns is not seen (the documented price of not re-reading GBs)."""
    other = _copy(turbo_root, tmp_path)
    first = sc.checkpoint_weight_hashes(other)
    _flip_byte(other / "vae" / "diffusion_pytorch_model.safetensors", keep_mtime=True)
    assert sc.checkpoint_weight_hashes(other) == first


def test_a_broken_cache_file_is_started_afresh(turbo_root, tmp_path):
    sc.hash_cache_path().parent.mkdir(parents=True)
    sc.hash_cache_path().write_text("{not json")
    assert sc.checkpoint_weight_hashes(turbo_root)["vae"]
    assert isinstance(json.loads(sc.hash_cache_path().read_text()), dict)


def test_compare_weights_names_missing_and_changed_components():
    recorded = {"dit": {"model.safetensors": "a"}, "lm": {"model.safetensors": "b"}}
    current = {"dit": {"model.safetensors": "c"}}
    assert sc.compare_weights(recorded, current) == ["dit (model.safetensors)", "lm (not in this checkpoint)"]
    assert sc.compare_weights(recorded, {**current, "dit": recorded["dit"], "lm": recorded["lm"]}) == []


def test_a_sidecar_without_hashes_says_so(turbo_root):
    same, line = sc.weights_verdict({"request": {}}, turbo_root, "old.json")
    assert same and "records no weight hashes" in line


def _generate(root: Path, out: Path, *extra: str) -> int:
    from songflow.interfaces.cli import main

    argv = ["generate", "--checkpoint", str(root), "--caption", "pop", "--duration", "2", "--seed", "4"]
    return main([*argv, "--out", str(out), *extra])


def test_replay_on_another_folder_says_same_or_which_component_differs(turbo_root, tmp_path, capsys):
    """The sidecar records the weights; --from on an identical copy says "same weights"; on a copy with
    one changed byte it warns naming the component and still runs; --strict-weights refuses."""
    import soundfile as sf

    assert _generate(turbo_root, tmp_path / "a" / "song.wav", "--quiet") == 0
    sidecar = tmp_path / "a" / "song.json"
    data = json.loads(sidecar.read_text())
    assert data["weights_sha256"] == sc.checkpoint_weight_hashes(turbo_root)
    other = _copy(turbo_root, tmp_path / "machine2")
    capsys.readouterr()
    from songflow.interfaces.cli import main

    replay = ["generate", "--checkpoint", str(other), "--from", str(sidecar)]
    assert main([*replay, "--out", str(tmp_path / "b" / "song.wav")]) == 0
    err = capsys.readouterr().err
    assert f"weights: same weights as recorded in {sidecar}" in err.splitlines()
    a, _ = sf.read(tmp_path / "a" / "song.wav")
    b, _ = sf.read(tmp_path / "b" / "song.wav")
    assert (a == b).all()

    _flip_byte(other / "Qwen3-Embedding-0.6B" / "model.safetensors")
    assert main([*replay, "--out", str(tmp_path / "c" / "song.wav"), "--quiet"]) == 0
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "weights" in x]
    assert line.startswith("warning: the weights differ") and "text_encoder (model.safetensors)" in line
    code = main([*replay, "--out", str(tmp_path / "d" / "song.wav"), "--strict-weights"])
    assert code == 2 and "text_encoder (model.safetensors)" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_strict_weights_needs_from(turbo_root, tmp_path, capsys):
    assert _generate(turbo_root, tmp_path / "x.wav", "--strict-weights") == 2
    assert "add --from" in capsys.readouterr().err


def test_info_prints_the_hashes(turbo_root, capsys):
    from songflow.interfaces.cli import main

    assert main(["info", str(turbo_root), "--hashes"]) == 0
    out = capsys.readouterr().out
    for component, files in sc.checkpoint_weight_hashes(turbo_root).items():
        for name, digest in files.items():
            assert f"  {component}  {name}  {digest}" in out


def test_v1_sidecars_record_their_components(tmp_path):
    """The v1 family too: its four components (the shipped songflow-tiny model)."""
    from songflow.checkpoint.hub import resolve_checkpoint

    hashes = sc.checkpoint_weight_hashes(resolve_checkpoint(None))
    assert set(hashes) == {"transformer", "dcae", "vocoder", "text_encoder"}
    assert all(files for files in hashes.values())
