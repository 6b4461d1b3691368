"""Write random-weight checkpoint folders: ACE-Step v1 (the official four-folder layout) and ACE-Step 1.5
(the official ``checkpoints/`` layout, :func:`build_random_v15_checkpoint`).

Used by tests, benchmarks and the README demo until a trained default model ships. The lyric vocabulary
it writes is our own character-level stand-in that keeps the official special-token ids (language tags,
structure tags), so lyrics tokenize through the same code path; it is not the official VoiceBPE vocab.
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import torch

from songflow.fileio import atomic_path, atomic_write_text

# official special tokens of the lyric vocabulary: id -> text
LYRIC_SPECIAL_TOKENS = {
    0: "[STOP]",
    1: "[UNK]",
    2: "[SPACE]",
    259: "[en]",
    260: "[de]",
    261: "[START]",
    262: "[fr]",
    267: "[ru]",
    284: "[es]",
    285: "[it]",
    286: "[pt]",
    293: "[cs]",
    294: "[pl]",
    295: "[tr]",
    297: "[nl]",
    5022: "[ar]",
    5023: "[zh-cn]",
    5412: "[ja]",
    5753: "[hu]",
    6152: "[ko]",
    6680: "[hi]",
    6681: "[start]",
    6682: "[intro]",
    6683: "[verse]",
    6684: "[chorus]",
    6685: "[bridge]",
    6686: "[outro]",
    6687: "[end]",
    6688: "[inst]",
    6689: "[solo]",
    6690: "[hook]",
    6691: "[pre-chorus]",
    6692: "[break]",
}
LYRIC_VOCAB_SIZE = 6693
TAG_WORDS = (
    "pop rock electronic hip hop jazz piano guitar drums bass vocal vocals female male funk soul "
    "metal folk country blues classical ambient dance house techno trap rap orchestral synth strings "
    "bpm energetic upbeat calm sad happy melodic groovy dark slow fast acoustic lofi , 60 70 80 90 100 "
    "105 110 120 128 140 160 major minor key"
).split()


def build_lyric_vocab(path: Path) -> Path:
    """A character-level ``tokenizers`` BPE vocab with the official special-token ids."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    chars = list(string.ascii_lowercase + string.digits + string.punctuation) + [
        chr(c) for c in range(0xE0, 0x100)
    ]
    vocab: dict[str, int] = {}
    free = (i for i in range(LYRIC_VOCAB_SIZE) if i not in LYRIC_SPECIAL_TOKENS)
    for ch in chars:
        vocab[ch] = next(free)
    for i in free:
        vocab[f"<unused{i}>"] = i
    for i, tok in LYRIC_SPECIAL_TOKENS.items():
        vocab[tok] = i
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in LYRIC_SPECIAL_TOKENS.values()])
    atomic_write_text(path, tokenizer.to_str())
    return path


def tag_tokens(text: str) -> list[str]:
    """How the word-level tag tokenizer splits ``text``: lower-cased words and punctuation runs."""
    from tokenizers import pre_tokenizers

    return [w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text.lower())]


def write_text_encoder(
    folder: Path, d_model: int, n_layers: int, seed: int, words: tuple[str, ...] = tuple(TAG_WORDS)
) -> None:
    """A small random UMT5 encoder in ``folder`` with a word-level tokenizer over ``words`` (lower-cased;
    anything else maps to ``<unk>``). It stays frozen, as UMT5 does: the DiT learns to read its states."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import UMT5Config, UMT5EncoderModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["<pad>", "</s>", "<unk>", *dict.fromkeys(w.lower() for w in words if w)]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    atomic_write_text(folder / "tokenizer.json", tok.to_str())
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    atomic_write_text(folder / "special_tokens_map.json", json.dumps(special, indent=2))
    atomic_write_text(
        folder / "tokenizer_config.json",
        json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 256, **special}, indent=2
        ),
    )
    cfg = UMT5Config(
        vocab_size=max(128, len(vocab)),
        d_model=d_model,
        d_kv=d_model // 2,
        d_ff=2 * d_model,
        num_layers=n_layers,
        num_heads=2,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(seed)
    UMT5EncoderModel(cfg).save_pretrained(folder, safe_serialization=True)


def tiny_configs():
    """(transformer, lyric encoder, DCAE, vocoder) configs of the tiny random model.

    Small widths, but the official audio geometry (44.1 kHz, hop 512, 128 mels) so the codec fits.
    """
    from songflow.models.acestep_v1.dcae import DCAEConfig
    from songflow.models.acestep_v1.lyric_encoder import LyricEncoderConfig
    from songflow.models.acestep_v1.transformer import TransformerConfig
    from songflow.models.acestep_v1.vocoder import VocoderConfig

    tcfg = TransformerConfig.tiny()
    lcfg = LyricEncoderConfig.tiny(input_size=tcfg.lyric_hidden_size)
    vcfg = VocoderConfig(dims=(16, 24, 32, 32), num_mels=32, upsample_initial_channel=128)
    return tcfg, lcfg, DCAEConfig.tiny(), vcfg


def build_random_checkpoint(root: Path, *, size: str = "tiny", seed: int = 0) -> Path:
    """Write ``root/{ace_step_transformer,music_dcae_f8c8,music_vocoder,umt5-base}`` + ``vocab.json``."""
    from songflow.checkpoint.acestep_v1 import save_component
    from songflow.errors import ConfigError
    from songflow.models.acestep_v1.dcae import DCAE
    from songflow.models.acestep_v1.transformer import ACEStepTransformer
    from songflow.models.acestep_v1.vocoder import Vocoder

    if size != "tiny":
        raise ConfigError(f"unknown random checkpoint size {size!r}; only 'tiny' is available")
    root = Path(root)
    tcfg, lcfg, dcfg, vcfg = tiny_configs()
    torch.manual_seed(seed)
    save_component(ACEStepTransformer(tcfg, lcfg), tcfg, root / "ace_step_transformer")
    lcfg.to_file(root / "ace_step_transformer" / "lyric_encoder_config.json")
    save_component(DCAE(dcfg), dcfg, root / "music_dcae_f8c8")
    vocoder = Vocoder(vcfg)
    with torch.no_grad():  # unit-ish gain per conv: default init decays to silence over 7 upsampling stages
        for name, param in vocoder.named_parameters():
            if name.endswith("weight_g"):
                param.fill_(1.3)
    save_component(vocoder, vcfg, root / "music_vocoder")
    write_text_encoder(root / "umt5-base", d_model=tcfg.text_embedding_dim, n_layers=2, seed=seed)
    build_lyric_vocab(root / "vocab.json")
    return root


# --------------------------------------------------------------------------------------------------------
# ACE-Step 1.5
# --------------------------------------------------------------------------------------------------------

# the tiny text encoder of the 1.5 parity fixtures (../shared/golden/acestep_v15/README.md); its width
# follows the DiT config's text_hidden_dim
TINY_V15_TEXT_ENCODER = dict(
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=64
)
# Qwen3-Embedding-0.6B
FULL_V15_TEXT_ENCODER = dict(
    num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128, intermediate_size=3072,
    vocab_size=151669,
)  # fmt: skip
# the stand-in tokenizer: ids 0..255 the byte-level alphabet (sorted), then these specials
V15_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # pad, chat start, eos
V15_SILENCE_FRAMES = 1500  # T_s of the stored silence latent (60 s at 25 Hz, as in the fixtures)

_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}


def _random_init(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """One float32 tensor by the fixtures' rule: norm weights 1 + N(0, .1), biases N(0, .05), embeddings
    and special tokens N(0, .2), others N(0, clip(1/sqrt(fan_in), .02, .2))."""
    leaf = key.rsplit(".", 1)[-1]
    owner = key.rsplit(".", 2)[-2] if key.count(".") else ""
    values = torch.randn(shape, generator=generator)
    if leaf == "weight" and len(shape) == 1 and "norm" in owner:
        return 1.0 + 0.1 * values
    if leaf == "bias":
        return 0.05 * values
    if "embed" in key or "special_token" in key or "emb" in leaf:
        return 0.2 * values
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else max(1, shape[0] if shape else 1)
    return min(0.2, max(0.02, fan_in**-0.5)) * values


def write_random_safetensors(module: torch.nn.Module, path: Path, *, dtype: torch.dtype, seed: int) -> Path:
    """Write ``module``'s state dict to ``path`` tensor by tensor (peak memory: one tensor).

    ``module`` may have its parameters on the meta device (``init_empty_weights``): those are drawn at
    random (:func:`_random_init`, one generator seeded with ``seed``, in key order) and stored in ``dtype``;
    real tensors (computed buffers) are written as they are (floating ones cast to ``dtype``). The file is
    the plain safetensors format (8-byte header length, JSON header, data), written atomically.
    """
    state = dict(module.state_dict())
    order = sorted(state, key=lambda k: -_dtype_of(state[k], dtype).itemsize)  # widest dtype first
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key in order:
        t, dt = state[key], _dtype_of(state[key], dtype)
        size = math.prod(t.shape) * dt.itemsize
        header[key] = {
            "dtype": _SAFETENSORS_DTYPES[dt],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    generator = torch.Generator().manual_seed(seed)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for key in order:
            t = state[key]
            value = _random_init(key, tuple(t.shape), generator) if t.is_meta else t.detach().cpu()
            value = value.to(_dtype_of(t, dtype)).contiguous()
            f.write(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return path


def _dtype_of(t: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    return dtype if t.is_floating_point() else t.dtype


def write_v15_tokenizer(folder: Path) -> Path:
    """The offline stand-in tokenizer of the fixtures (``tokenizers`` byte-level BPE, no merges): ids
    0..255 the byte alphabet in sorted order, then ``<|endoftext|>`` (pad), ``<|im_start|>``, ``<|im_end|>``
    (eos); ``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json``, readable by
    ``transformers.AutoTokenizer.from_pretrained``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in V15_SPECIAL_TOKENS])
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "tokenizer.json", tok.to_str())
    special = {"pad_token": V15_SPECIAL_TOKENS[0], "eos_token": V15_SPECIAL_TOKENS[2]}
    atomic_write_text(folder / "special_tokens_map.json", json.dumps(special, indent=2))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 131072, **special}
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2))
    return folder


def _write_v15_vae(folder: Path, latent_channels: int, full: bool, seed: int) -> None:
    """``vae/``: the released (``full``) or the fixtures' tiny Oobleck sizes, ``latent_channels`` wide."""
    import dataclasses

    from songflow.checkpoint.acestep_v15 import CONFIG_NAME, VAE_WEIGHTS_NAME
    from songflow.checkpoint.strict import init_empty_weights
    from songflow.models.acestep_v15.vae import OobleckConfig, build_autoencoder

    config = dataclasses.replace(
        OobleckConfig() if full else OobleckConfig.tiny(), decoder_input_channels=latent_channels
    )
    with init_empty_weights():
        autoencoder = build_autoencoder(config)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config.to_dict(), indent=2) + "\n")
    write_random_safetensors(autoencoder, folder / VAE_WEIGHTS_NAME, dtype=torch.float32, seed=seed)


def _write_v15_text_encoder(folder: Path, width: int, full: bool, seed: int) -> None:
    from transformers import Qwen3Config, Qwen3Model

    from songflow.checkpoint.acestep_v15 import WEIGHTS_NAME
    from songflow.checkpoint.strict import init_empty_weights

    n_tokens = 256 + len(V15_SPECIAL_TOKENS)
    sizes = dict(FULL_V15_TEXT_ENCODER if full else dict(TINY_V15_TEXT_ENCODER, vocab_size=n_tokens))
    cfg = Qwen3Config(
        hidden_size=width, tie_word_embeddings=True, rope_theta=1_000_000, rms_norm_eps=1e-6,
        max_position_embeddings=32768, pad_token_id=256, bos_token_id=256, eos_token_id=258, **sizes,
    )  # fmt: skip
    cfg.architectures = ["Qwen3Model"]
    with init_empty_weights():
        model = Qwen3Model(cfg)
    write_v15_tokenizer(folder)
    cfg.save_pretrained(folder)
    write_random_safetensors(model, folder / WEIGHTS_NAME, dtype=torch.float32, seed=seed)


# --------------------------------------------------------------------------------------------------------
# ACE-Step 1.5: the 5 Hz LM planner (Qwen3ForCausalLM)
# --------------------------------------------------------------------------------------------------------

# the fixtures' tiny LM (../shared/golden/acestep_v15/README.md, "Tiny model configuration")
TINY_V15_LM = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
    intermediate_size=64,
)  # fmt: skip
# Qwen3-0.6B, the shape of acestep-5Hz-lm-0.6B
FULL_V15_LM = dict(
    hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
    intermediate_size=3072,
)  # fmt: skip
V15_LM_SIZES = {"tiny": TINY_V15_LM, "0.6B": FULL_V15_LM}
V15_LM_FOLDERS = {"tiny": "acestep-5Hz-lm-tiny", "0.6B": "acestep-5Hz-lm-0.6B"}
TINY_V15_LM_CODES = 512  # audio-code tokens of the tiny stand-in vocabulary (the shared fixtures' count)
FULL_V15_LM_CODES = 65535  # the release: <|audio_code_0|> .. <|audio_code_65534|>
QWEN3_TEXT_IDS = 151643  # ids below the first Qwen3 special token (<|endoftext|>)
QWEN3_THINK_ID = 151667  # <think>; </think> follows, then the audio codes (151669 in the release)

# Qwen3-style chat template (the fixtures' rendering rule): system/user turns
# "<|im_start|>{role}\n{content}<|im_end|>\n"; an assistant turn after the last user turn that carries
# reasoning ("...</think>...") or is the last message renders "<think>\n{reasoning}\n</think>\n\n{rest}".
V15_LM_CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_user=messages|length - 1) %}"
    "{%- for m in messages[::-1] %}{%- set i = (messages|length - 1) - loop.index0 %}"
    "{%- if m.role == 'user' and ns.last_user == messages|length - 1 %}"
    "{%- set ns.last_user = i %}{%- endif %}"
    "{%- endfor %}"
    "{%- for m in messages %}{%- set text = m.content if m.content is string else '' %}"
    "{%- if m.role == 'user' or m.role == 'system' %}"
    "{{- '<|im_start|>' + m.role + '\\n' + text + '<|im_end|>\\n' }}"
    "{%- elif m.role == 'assistant' %}{%- set thought = '' %}"
    "{%- if '</think>' in text %}"
    "{%- set thought = text.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set text = text.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{%- if loop.index0 > ns.last_user and (loop.last or thought) %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + thought.strip('\\n') + '\\n</think>\\n\\n' }}"
    "{{- text.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + text }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _lm_vocab(size: str) -> tuple[dict[str, int], list[tuple[str, bool]]]:
    """(BPE vocab text -> id, added tokens (text, special)) of the stand-in LM tokenizer.

    Ids 0..255: the byte alphabet (sorted). ``tiny``: 256 ``<|endoftext|>``, 257 ``<|im_start|>``, 258
    ``<|im_end|>``, 259 ``<think>``, 260 ``</think>``, 261 + k ``<|audio_code_k|>`` (k < 512). ``0.6B``: the
    release's ids: reserved fillers up to 151642, the three specials at 151643-151645, fillers to 151666,
    ``<think>`` 151667, ``</think>`` 151668, ``<|audio_code_k|>`` = 151669 + k (k < 65535): 217204 ids.
    """
    from tokenizers import pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    specials = list(V15_SPECIAL_TOKENS)
    if size == "tiny":
        first_special, think_id, n_codes = len(vocab), len(vocab) + len(specials), TINY_V15_LM_CODES
    else:
        first_special, think_id, n_codes = QWEN3_TEXT_IDS, QWEN3_THINK_ID, FULL_V15_LM_CODES
    for i in range(len(vocab), think_id):
        vocab[f"<|reserved_{i}|>"] = i
    for k, text in enumerate(specials):
        vocab.pop(f"<|reserved_{first_special + k}|>", None)
        vocab[text] = first_special + k
    added = [(t, True) for t in specials] + [("<think>", False), ("</think>", False)]
    added += [(f"<|audio_code_{k}|>", False) for k in range(n_codes)]
    for k, (text, _) in enumerate(added[len(specials) :]):
        vocab[text] = think_id + k
    return vocab, added


def write_v15_lm_tokenizer(folder: Path, size: str = "tiny") -> Path:
    """The stand-in LM tokenizer (:func:`_lm_vocab` ids; byte-level BPE, no merges) + the Qwen3-style
    ``chat_template.jinja``: ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab, added = _lm_vocab(size)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in added])
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "tokenizer.json", tok.to_str())
    special = {"pad_token": V15_SPECIAL_TOKENS[0], "eos_token": V15_SPECIAL_TOKENS[2]}
    atomic_write_text(folder / "special_tokens_map.json", json.dumps(special, indent=2))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 131072, **special}
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2))
    atomic_write_text(folder / "chat_template.jinja", V15_LM_CHAT_TEMPLATE)
    return folder


def build_random_v15_lm(
    folder: Path, *, size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.bfloat16
) -> Path:
    """Write a random-weight 5 Hz LM folder (``Qwen3ForCausalLM``, tied embeddings, rope_theta 1e6) at
    ``folder``: ``config.json``, ``model.safetensors`` (``dtype``, no ``lm_head.weight``) and the stand-in
    tokenizer (:func:`write_v15_lm_tokenizer`). ``size``: ``"tiny"`` (the fixtures' shape, vocab 773) or
    ``"0.6B"`` (Qwen3-0.6B: hidden 1024, 28 layers, 16/8 heads, head_dim 128, FFN 3072; vocab 217204 as the
    release: 1.3 GB in bf16, written tensor by tensor)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from songflow.checkpoint.acestep_v15 import WEIGHTS_NAME
    from songflow.checkpoint.strict import init_empty_weights
    from songflow.errors import ConfigError

    if size not in V15_LM_SIZES:
        raise ConfigError(f"unknown random LM size {size!r}; use one of {sorted(V15_LM_SIZES)}")
    folder = Path(folder)
    write_v15_lm_tokenizer(folder, size)
    vocab, _ = _lm_vocab(size)
    specials = {t: vocab[t] for t in V15_SPECIAL_TOKENS}
    cfg = Qwen3Config(
        vocab_size=len(vocab), tie_word_embeddings=True, rope_theta=1_000_000, rms_norm_eps=1e-6,
        max_position_embeddings=32768, pad_token_id=specials["<|endoftext|>"],
        bos_token_id=specials["<|endoftext|>"], eos_token_id=specials["<|im_end|>"], **V15_LM_SIZES[size],
    )  # fmt: skip
    cfg.architectures = ["Qwen3ForCausalLM"]
    with init_empty_weights():
        model = Qwen3ForCausalLM(cfg)
    model.lm_head._parameters.pop("weight", None)  # tied: the file holds the embedding once
    cfg.save_pretrained(folder)
    write_random_safetensors(model, folder / WEIGHTS_NAME, dtype=dtype, seed=seed)
    return folder


def v15_dit_folder_name(config) -> str:
    """The official folder name of a DiT config: ``acestep-v15-{turbo,base,sft}``, ``-xl-`` when XL."""
    from songflow.checkpoint.acestep_v15 import DIT_PREFIX, is_xl

    return DIT_PREFIX + ("xl-" if is_xl(config) else "") + config.variant


def build_random_v15_checkpoint(
    root: Path,
    *,
    config=None,
    variant: str = "turbo",
    seed: int = 0,
    dit_dtype: torch.dtype = torch.bfloat16,
    full_components: bool | None = None,
    lm: bool | str = False,
) -> Path:
    """Write a random-weight ACE-Step 1.5 ``checkpoints/`` folder at ``root`` and return ``root``.

    ``root/<dit folder>/`` (``acestep-v15-<variant>``, ``-xl-`` for an XL-shaped config: ``config.json``,
    ``model.safetensors`` in ``dit_dtype``, ``silence_latent.pt`` ``[1, C, 1500]``), ``root/vae/`` (diffusers
    ``AutoencoderOobleck``, C latent channels) and ``root/Qwen3-Embedding-0.6B/`` (``Qwen3Model`` of the
    config's text width + the stand-in tokenizer). ``config`` defaults to ``AceStep15Config.tiny()``;
    ``variant`` (turbo/base/sft) overrides its ``model_version``/``is_turbo``. ``full_components`` (None:
    when the DiT is at least the released width) writes the released VAE and Qwen3-Embedding-0.6B sizes
    instead of the tiny ones. Every file is written tensor by tensor, so a full 2.4 B DiT needs about one
    tensor of memory (and 4.8 GB of disk in bf16). ``lm`` adds a random 5 Hz LM folder
    (:func:`build_random_v15_lm`): True picks the size from ``full_components`` (``acestep-5Hz-lm-0.6B`` when
    full, else ``acestep-5Hz-lm-tiny``), or name the size (``"tiny"``, ``"0.6B"``).
    """
    import dataclasses

    from songflow.checkpoint.acestep_v15 import (
        SILENCE_LATENT_NAME,
        TEXT_ENCODER_FOLDER,
        VAE_FOLDER,
        WEIGHTS_NAME,
    )
    from songflow.checkpoint.strict import init_empty_weights
    from songflow.errors import ConfigError
    from songflow.models.acestep_v15.config import AceStep15Config
    from songflow.models.acestep_v15.model import AceStep15DiT

    if variant not in ("turbo", "base", "sft"):
        raise ConfigError(f"unknown ACE-Step 1.5 variant {variant!r}; use 'turbo', 'base' or 'sft'")
    config = dataclasses.replace(
        config or AceStep15Config.tiny(), model_version=variant, is_turbo=variant == "turbo"
    )
    full = (
        config.hidden_size >= AceStep15Config.full().hidden_size
        if full_components is None
        else full_components
    )
    root = Path(root)
    dit_dir = root / v15_dit_folder_name(config)
    dit_dir.mkdir(parents=True, exist_ok=True)
    config.to_json(dit_dir / "config.json")
    with init_empty_weights():
        dit = AceStep15DiT(config)
    write_random_safetensors(dit, dit_dir / WEIGHTS_NAME, dtype=dit_dtype, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    channels = config.audio_acoustic_hidden_dim
    silence = 0.5 * torch.randn(1, channels, V15_SILENCE_FRAMES, generator=generator)
    with atomic_path(dit_dir / SILENCE_LATENT_NAME) as tmp:
        torch.save(silence, tmp)
    _write_v15_vae(root / VAE_FOLDER, channels, full, seed + 2)
    _write_v15_text_encoder(root / TEXT_ENCODER_FOLDER, config.text_hidden_dim, full, seed + 3)
    if lm:
        size = lm if isinstance(lm, str) else ("0.6B" if full else "tiny")
        build_random_v15_lm(
            root / V15_LM_FOLDERS.get(size, f"acestep-5Hz-lm-{size}"), size=size, seed=seed + 4
        )
    return root
