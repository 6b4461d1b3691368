"""Downloading the official checkpoint and the lyric vocabulary (the only module that talks to a network).

* :func:`download_checkpoint` fetches exactly the files of the four checkpoint folders from the
  Hugging Face Hub into a plain folder (``--local-dir`` layout, no symlinked cache), then validates it.
* :func:`download_v15` fetches an ACE-Step 1.5 model into the official ``checkpoints/`` layout (the main
  repo's shared components, then the DiT's own repo when it has one).
* :func:`fetch_lyric_vocab` fetches the official lyric BPE ``vocab.json`` (not part of the HF repo; it lives
  in the GitHub sources) from a pinned commit and checks its sha256 before writing it.

Nothing here runs at import time or from library code paths: the CLI (``songflow download``) calls it.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

from songflow.checkpoint.acestep_v1 import (
    CHECKPOINT_FILES,
    OPTIONAL_CHECKPOINT_FILES,
    validate_checkpoint_dir,
)
from songflow.errors import CheckpointError
from songflow.fileio import atomic_write_bytes

DEFAULT_REPO_ID = "ACE-Step/ACE-Step-v1-3.5B"

# acestep/models/lyrics_utils/vocab.json of github.com/ace-step/ACE-Step at commit d612523.
VOCAB_URL = (
    "https://raw.githubusercontent.com/ace-step/ACE-Step/d612523/acestep/models/lyrics_utils/vocab.json"
)
VOCAB_SHA256 = "c2a66ea48c478c0bb9acb5497144b926acdeaa37128faa799508d40f2b9cc558"
VOCAB_SIZE_BYTES = 364005
VOCAB_NAME = "vocab.json"


def checkpoint_allow_patterns() -> list[str]:
    """The repo paths :func:`download_checkpoint` fetches: the required files of the four folders plus the
    optional ones (nothing else, e.g. no quantized ``.bin`` variants)."""
    required = [f"{folder}/{name}" for folder, names in CHECKPOINT_FILES.items() for name in names]
    return required + list(OPTIONAL_CHECKPOINT_FILES)


def download_checkpoint(
    repo_id: str = DEFAULT_REPO_ID,
    local_dir: str | Path = "checkpoints",
    *,
    revision: str | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download the checkpoint files of ``repo_id`` into ``local_dir`` and return the validated folder.

    Files already present and unchanged are not downloaded again (huggingface_hub keeps their metadata in
    ``<local_dir>/.cache/huggingface``). ``endpoint`` overrides the Hub URL (a mirror; else ``HF_ENDPOINT``
    or huggingface.co). Raises CheckpointError with the reason when the Hub cannot be reached or the result
    is incomplete.
    """
    local_dir = Path(local_dir).expanduser()
    where = _snapshot(repo_id, local_dir, checkpoint_allow_patterns(), revision=revision, endpoint=endpoint)
    try:
        return validate_checkpoint_dir(local_dir)
    except CheckpointError as exc:
        raise CheckpointError(
            f"the download of {repo_id} into {local_dir} is incomplete (is {where} reachable?).\n{exc}"
        ) from exc


def _snapshot(
    repo_id: str,
    local_dir: Path,
    allow_patterns: list[str],
    *,
    revision: str | None = None,
    endpoint: str | None = None,
) -> str:
    """``snapshot_download`` of the ``allow_patterns`` files of ``repo_id`` into the plain folder
    ``local_dir``; every failure is a CheckpointError saying what to do. Returns the Hub URL used."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = endpoint or constants.ENDPOINT
    manual = f"huggingface-cli download {repo_id} --local-dir {local_dir}"
    try:
        snapshot_download(
            repo_id,
            local_dir=str(local_dir),
            revision=revision,
            endpoint=endpoint,
            allow_patterns=allow_patterns,
        )
    except RevisionNotFoundError as exc:
        raise CheckpointError(f"revision {revision!r} of {repo_id} not found on {where}") from exc
    except GatedRepoError as exc:
        raise CheckpointError(f"{repo_id} on {where} is gated: log in with `huggingface-cli login`") from exc
    except RepositoryNotFoundError as exc:
        raise CheckpointError(f"repository {repo_id} not found on {where} (check the name)") from exc
    except LocalEntryNotFoundError as exc:
        offline = " HF_HUB_OFFLINE is set: unset it to download." if constants.HF_HUB_OFFLINE else ""
        raise CheckpointError(
            f"cannot reach {where} to download {repo_id} and no complete copy is in {local_dir}.{offline} "
            f"Check your internet connection (or proxy / HF_ENDPOINT), or download the folder elsewhere with "
            f"`{manual}` and copy it here."
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise CheckpointError(
            f"downloading {repo_id} from {where} failed: {exc}. Try again or `{manual}`."
        ) from exc
    return where


# ACE-Step 1.5: the files fetched from each folder (no modeling *.py, never pickled weights)
V15_FILE_PATTERNS = ("*.json", "*.safetensors", "silence_latent.pt", "*.txt", "*.jinja")


def v15_allow_patterns(folders: list[str] | tuple[str, ...]) -> list[str]:
    """The paths fetched from the sub-folders ``folders`` of the 1.5 main repo."""
    return [f"{folder}/{pattern}" for folder in folders for pattern in V15_FILE_PATTERNS]


def download_v15(
    model: str = "acestep-v15-turbo",
    local_dir: str | Path = "checkpoints",
    *,
    lm: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download the ACE-Step 1.5 DiT ``model`` (and the LM ``lm`` if given) into the official
    ``checkpoints/`` layout at ``local_dir``; return the validated root.

    The VAE and the text encoder (and the turbo DiT and the 1.7B LM when asked for) come from the main repo
    ``ACE-Step/Ace-Step1.5`` (sub-folders of the same names); every other model from its own repo
    ``ACE-Step/<model>``, into ``local_dir/<model>``. ``revision`` applies to the repo ``model`` comes from.
    Only configs, safetensors, tokenizer files and ``silence_latent.pt`` are fetched (no ``.py``, no
    ``.bin``). Raises CheckpointError for an unknown name, an unreachable Hub or an incomplete result.
    """
    from songflow.checkpoint import acestep_v15 as v15

    known = (*v15.DIT_FOLDERS, *v15.LM_FOLDERS)
    for name, what in ((model, "DiT"), (lm, "LM")):
        if name is not None and name not in known:
            raise CheckpointError(f"unknown ACE-Step 1.5 {what} {name!r}; choose one of {', '.join(known)}")
    local_dir = Path(local_dir).expanduser()
    main = [v15.VAE_FOLDER, v15.TEXT_ENCODER_FOLDER] + [n for n in (model, lm) if n in v15.MAIN_REPO_FOLDERS]
    in_main = model in v15.MAIN_REPO_FOLDERS
    where = _snapshot(
        v15.MAIN_REPO_ID,
        local_dir,
        v15_allow_patterns(main),
        revision=revision if in_main else None,
        endpoint=endpoint,
    )
    for name in (model, lm):
        if name is not None and name not in v15.MAIN_REPO_FOLDERS:
            _snapshot(
                v15.SUBMODEL_REPO_IDS[name],
                local_dir / name,
                list(V15_FILE_PATTERNS),
                revision=revision if name == model else None,
                endpoint=endpoint,
            )
    try:
        return v15.validate_v15(local_dir, dit=model, lm=lm).root
    except CheckpointError as exc:
        raise CheckpointError(
            f"the download of {model} into {local_dir} is incomplete (is {where} reachable?).\n{exc}"
        ) from exc


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_lyric_vocab(
    dest_dir: str | Path,
    *,
    url: str = VOCAB_URL,
    sha256: str = VOCAB_SHA256,
    timeout_s: float = 60.0,
) -> Path:
    """Download the official lyric ``vocab.json`` to ``<dest_dir>/vocab.json`` and return its path.

    The bytes are checked against ``sha256`` before anything is written (mismatch -> CheckpointError, no
    file); the write is atomic. A file already there with the right hash is kept without any download.
    """
    dest = Path(dest_dir).expanduser() / VOCAB_NAME
    if dest.is_file() and _sha256(dest.read_bytes()) == sha256:
        return dest
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            data = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise CheckpointError(
            f"cannot download the lyric vocabulary from {url}: {exc}. Check your internet connection, or"
            f"download that file by hand and save it as {dest} (sha256 {sha256})."
        ) from exc
    digest = _sha256(data)
    if digest != sha256:
        raise CheckpointError(
            f"the lyric vocabulary downloaded from {url} has sha256 {digest} ({len(data)} bytes), expected "
            f"{sha256}: refusing to use it (nothing written to {dest})."
        )
    atomic_write_bytes(dest, data)
    return dest


def find_lyric_vocab(checkpoint_root: str | Path) -> Path | None:
    """The lyric vocab of a checkpoint: ``<root>/vocab.json``, else
    ``<root>/ace_step_transformer/vocab.json``, else None."""
    root = Path(checkpoint_root).expanduser()
    for candidate in (root / VOCAB_NAME, root / "ace_step_transformer" / VOCAB_NAME):
        if candidate.is_file():
            return candidate
    return None


# The model trained by this project and shipped inside the package (see its MODEL_CARD.md).
DEFAULT_MODEL_NAME = "songflow-tiny"


def default_model_dir() -> Path:
    """Folder of the shipped ``songflow-tiny`` checkpoint (official four-folder layout + vocab.json)."""
    return Path(__file__).resolve().parents[1] / "assets" / DEFAULT_MODEL_NAME


def resolve_checkpoint(checkpoint: str | Path | None) -> Path:
    """The checkpoint folder a user means: a path as given, or the shipped default model for None or
    ``"songflow-tiny"``. Raises :class:`CheckpointError` when the default model's weights are missing."""
    if checkpoint is not None and str(checkpoint) != DEFAULT_MODEL_NAME:
        return Path(checkpoint).expanduser()
    root = default_model_dir()
    if not (root / "ace_step_transformer").is_dir():
        raise CheckpointError(
            f"the default model {DEFAULT_MODEL_NAME} is not installed at {root}; reinstall songflow from its "
            "source tree, or pass --checkpoint DIR (e.g. one made by `songflow download`)"
        )
    return root


# Demo adapters shipped beside the default model (``assets/songflow-tiny/loras/<name>/``, PEFT layout).
LORAS_DIR_NAME = "loras"


def shipped_loras() -> dict[str, Path]:
    """The LoRA adapters shipped with the default model, by short name (e.g. ``"waltz-demo"``)."""
    root = default_model_dir() / LORAS_DIR_NAME
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir()}


def resolve_lora(name_or_path: str | Path) -> Path:
    """The LoRA folder or file a user means: an existing path as given, else a shipped adapter's short name
    (``--lora waltz-demo:0.8``); anything else is returned as given, for the loader to report."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    shipped = shipped_loras().get(str(name_or_path))
    return shipped if shipped is not None else path
