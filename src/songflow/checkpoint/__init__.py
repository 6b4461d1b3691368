"""Checkpoints: strict safetensors loading, device/dtype resolution, hub download, LoRA files, random
checkpoints.

* :mod:`~songflow.checkpoint.device`: ``resolve_device`` / ``resolve_dtype`` (``"auto"`` and aliases);
* :mod:`~songflow.checkpoint.strict`: safetensors-only reading and writing, the strict key/shape check with
  one error report, meta-device construction (any model family);
* :mod:`~songflow.checkpoint.acestep_v1`: the ACE-Step v1 folder layout and its component loaders;
* :mod:`~songflow.checkpoint.acestep_v15`: the ACE-Step 1.5 ``checkpoints/`` layout, its loaders, the
  silence latent and the official folder names / repo ids;
* :mod:`~songflow.checkpoint.lora`: LoRA adapter files;
* :mod:`~songflow.checkpoint.hub`: downloads and the shipped default model;
* :mod:`~songflow.checkpoint.random_checkpoint`: random-weight v1 and 1.5 checkpoints for tests and demos.
"""

from songflow.checkpoint.acestep_v1 import (
    CHECKPOINT_FILES,
    CHECKPOINT_FOLDERS,
    OPTIONAL_CHECKPOINT_FILES,
    WEIGHTS_NAME,
    Checkpoint,
    load_checkpoint,
    load_codec,
    load_dcae,
    load_transformer,
    load_vocoder,
    save_component,
    validate_checkpoint_dir,
)
from songflow.checkpoint.acestep_v15 import (
    V15Checkpoint,
    V15Layout,
    load_silence_latent,
    load_v15_checkpoint,
    load_v15_dit,
    load_v15_text_encoder,
    load_v15_vae,
    resolve_v15_layout,
    validate_v15,
)
from songflow.checkpoint.device import DTYPES, DeviceLike, parse_dtype, resolve_device, resolve_dtype
from songflow.checkpoint.hub import (
    DEFAULT_MODEL_NAME,
    DEFAULT_REPO_ID,
    default_model_dir,
    download_checkpoint,
    download_v15,
    fetch_lyric_vocab,
    find_lyric_vocab,
    resolve_checkpoint,
)
from songflow.checkpoint.lora import (
    OFFICIAL_TARGET_MODULES,
    LoraSpec,
    load_lora,
    lora_config,
    resolve_lora_files,
    save_lora,
    set_loras,
    unload_lora,
)
from songflow.checkpoint.random_checkpoint import (
    build_random_checkpoint,
    build_random_v15_checkpoint,
    tiny_configs,
)
from songflow.checkpoint.strict import (
    PICKLE_SUFFIXES,
    SafetensorsHeader,
    build_on_meta,
    init_empty_weights,
    load_state_dict_strict,
    read_header,
    require_safetensors,
    safetensors_summary,
    save_state_dict,
    state_dict_shapes,
    write_safetensors,
)

__all__ = [
    "CHECKPOINT_FILES",
    "CHECKPOINT_FOLDERS",
    "DEFAULT_MODEL_NAME",
    "DEFAULT_REPO_ID",
    "DTYPES",
    "OFFICIAL_TARGET_MODULES",
    "OPTIONAL_CHECKPOINT_FILES",
    "PICKLE_SUFFIXES",
    "WEIGHTS_NAME",
    "Checkpoint",
    "DeviceLike",
    "LoraSpec",
    "SafetensorsHeader",
    "V15Checkpoint",
    "V15Layout",
    "build_on_meta",
    "build_random_checkpoint",
    "build_random_v15_checkpoint",
    "default_model_dir",
    "download_checkpoint",
    "download_v15",
    "fetch_lyric_vocab",
    "find_lyric_vocab",
    "init_empty_weights",
    "load_checkpoint",
    "load_codec",
    "load_dcae",
    "load_lora",
    "load_silence_latent",
    "load_state_dict_strict",
    "load_transformer",
    "load_v15_checkpoint",
    "load_v15_dit",
    "load_v15_text_encoder",
    "load_v15_vae",
    "load_vocoder",
    "lora_config",
    "parse_dtype",
    "read_header",
    "require_safetensors",
    "resolve_checkpoint",
    "resolve_device",
    "resolve_dtype",
    "resolve_lora_files",
    "resolve_v15_layout",
    "safetensors_summary",
    "save_component",
    "save_lora",
    "save_state_dict",
    "set_loras",
    "state_dict_shapes",
    "tiny_configs",
    "unload_lora",
    "validate_checkpoint_dir",
    "validate_v15",
    "write_safetensors",
]
