"""Write a random-weight checkpoint folder in the official four-folder layout.

Used by tests, benchmarks and the README demo until a trained default model ships. The lyric vocabulary
it writes is our own character-level stand-in that keeps the official special-token ids (language tags,
structure tags), so lyrics tokenize through the same code path; it is not the official VoiceBPE vocab.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from songflow.fileio import atomic_write_text

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
