"""The 1.5 planner grammar (sampling/planner_grammar.py) and plan text (text/acestep_v15_plan_text.py).

* golden: the official constrained decoder replayed call by call (``legacy=True``): at every recorded step the
  allowed set equals the fixture's, the top-16 final logits of greedy steps match, outputs parse to the
  recorded metadata, the codes prompt holds ``format_cot`` of it;
* fixed mode (default): no special token inside the caption (SPEC §9.9), no unconstrained tokens after a
  caption line break (SPEC §9.13);
* properties (hypothesis): random scores through the grammar always give a valid, parseable plan that keeps
  the user's fields, then exactly ``target_codes`` codes + EOS — with the fixtures' stand-in tokenizer and
  with a small byte-level BPE tokenizer built here (with merges), so they run without ``../shared``;
* the CoT YAML equals ``yaml.dump`` (PyYAML only here).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import golden_lm_cases, load_lm_case
from songflow.errors import ConfigError
from songflow.requests_v15 import VALID_KEYSCALES, VALID_LANGUAGES
from songflow.sampling.planner_grammar import PlanGrammar, PlannerVocab
from songflow.text.acestep_v15_plan_text import (
    codes_from_text,
    codes_to_text,
    format_cot,
    parse_plan_output,
)

HYPO = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- tokenizers -------------------------------------------------------------------------------------------


def _load_tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True, use_fast=True)


@pytest.fixture(scope="module")
def golden_tok(golden_v15_lm_dir):
    return _load_tokenizer(golden_v15_lm_dir)


def _merged_words() -> list[str]:
    return ["bpm", "caption", "duration", "keyscale", "language", "timesignature", " major", " minor", " en",
            " zh", "120", "12", " C", " soft", " piano", "\n  "]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_tok():
    """A small byte-level BPE tokenizer with merges (multi-char field names, numbers, keys, an indented
    line break) + the special, think and 300 audio-code tokens (codes not contiguous with the bytes)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = []
    for word in _merged_words():
        pieces = [p for p, _ in byte_level.pre_tokenize_str(word)][0]
        left = pieces[0]
        for ch in pieces[1:]:
            merges.append((left, ch))
            left = left + ch
            vocab.setdefault(left, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    added = [AddedToken(t, special=True, normalized=False) for t in specials]
    added += [AddedToken(t, normalized=False) for t in ["<think>", "</think>", "<|filler|>"]]
    added += [AddedToken(f"<|audio_code_{k}|>", normalized=False) for k in range(300)]
    tok.add_tokens(added)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


# --- golden replay ----------------------------------------------------------------------------------------


def _grammar_for_call(vocab, tok, call: dict, max_duration_s: int, *, legacy: bool = True) -> PlanGrammar:
    target_s = call["target_duration"]
    return PlanGrammar(
        vocab, tok, phase=call["generation_phase"], user_metadata=call["user_metadata"],
        skip_caption=call["skip_caption"], skip_language=call["skip_language"],
        stop_at_reasoning=call["stop_at_reasoning"], target_codes=int(5 * target_s) if target_s else None,
        max_duration_s=max_duration_s, legacy=legacy,
    )  # fmt: skip


def _teacher_forced_logits(model, t: dict, prefix: str, tokens: torch.Tensor, cfg: bool) -> torch.Tensor:
    """[rows, steps, V] last-position logits of every step (one full forward over prompt + tokens)."""
    if cfg:
        ids, mask = t[prefix + "batch_input_ids"], t[prefix + "batch_attention_mask"]
    else:
        ids = t[prefix + "input_ids"]
        mask = torch.ones_like(ids)
    rows = ids.shape[0]
    full = torch.cat([ids, tokens[None].repeat(rows, 1)], 1)
    full_mask = torch.cat([mask, torch.ones(rows, len(tokens), dtype=mask.dtype)], 1)
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=full_mask).logits.float()
    return logits[:, ids.shape[1] - 1 : -1]


def _upstream_filters(scores: torch.Tensor, call: dict, history: torch.Tensor) -> torch.Tensor:
    """Repetition penalty, top-k, top-p (on un-tempered logits) as the official decode loop (SPEC §7)."""
    scores = scores.clone()
    if call["repetition_penalty"] != 1.0:
        from transformers import RepetitionPenaltyLogitsProcessor

        scores = RepetitionPenaltyLogitsProcessor(call["repetition_penalty"])(history[None], scores[None])[0]
    top_k = call["top_k"]
    if top_k:
        scores[scores < torch.topk(scores, top_k).values[-1]] = float("-inf")
    top_p = call["top_p"]
    if top_p is not None and 0.0 < top_p < 1.0:
        order = torch.sort(scores, descending=True)
        cum = torch.cumsum(torch.softmax(order.values, -1), -1)
        drop = cum > top_p
        drop[1:] = drop[:-1].clone()
        drop[0] = False
        scores[order.indices[drop]] = float("-inf")
    return scores


def _check_top16(final: torch.Tensor, want_v: torch.Tensor, want_i: torch.Tensor, where: str) -> None:
    """Top-16 of the final logits: same values (1e-4), same ids where the values are not near-ties."""
    top = torch.topk(final, 16)
    finite = want_v > -1e38  # the fixtures store -inf as -3e38
    assert torch.equal(torch.isfinite(top.values), finite), where
    assert torch.allclose(top.values[finite], want_v[finite], atol=1e-4, rtol=1e-5), where
    gaps = torch.cat([want_v[:-1] - want_v[1:], torch.tensor([float("inf")])])
    gaps = torch.minimum(gaps, torch.cat([torch.tensor([float("inf")]), gaps[:-1]]))
    clear = finite & (gaps > 1e-3)
    assert torch.equal(top.indices[clear], want_i[clear]), where


def _replay_call(model, vocab, tok, case: dict, t: dict, n: int) -> PlanGrammar:
    """Teacher-force call ``n``; assert the allowed set (and greedy top-16) of every step."""
    call, prefix = case["calls"][n], f"call{n}/"
    max_duration = case["setup"]["tokenizer"]["constrained_processor"]["max_duration"]
    grammar = _grammar_for_call(vocab, tok, call, max_duration)
    tokens = t[prefix + "steps/token"][:, 0]
    scale = call["cfg_scale"]
    logits = _teacher_forced_logits(model, t, prefix, tokens, scale > 1.0)
    history = t[prefix + ("batch_input_ids" if scale > 1.0 else "input_ids")][0]
    for step, token in enumerate(tokens.tolist()):
        raw = logits[:, step]
        row = (
            raw[0]
            if scale <= 1.0
            else torch.nan_to_num(raw[1] + scale * (raw[0] - raw[1]), nan=float("-inf"))
        )
        final = _upstream_filters(grammar.constrain(row.clone()), call, history)
        mine = torch.isfinite(final).numpy()
        want = np.unpackbits(t[prefix + "steps/allowed_mask_packbits"][step, 0].numpy())[: vocab.vocab_size]
        where = f"{case['request']['name']} call {n} step {step} state {grammar.state}"
        assert mine.sum() == int(t[prefix + "steps/allowed_count"][step, 0]), where
        assert (mine == want.astype(bool)).all(), where
        _check_top16(
            final,
            t[prefix + "steps/final_top_values"][step, 0],
            t[prefix + "steps/final_top_ids"][step, 0],
            where,
        )
        if call["temperature"] <= 0:
            assert int(final.argmax()) == token, where
        grammar.advance(token)
        history = torch.cat([history, torch.tensor([token])])
    return grammar


@pytest.fixture(scope="module")
def golden_model(golden_v15_lm_dir):
    from transformers import Qwen3ForCausalLM

    return Qwen3ForCausalLM.from_pretrained(golden_v15_lm_dir, torch_dtype=torch.float32).eval()


def test_v15_planner_grammar_golden_replay(golden_v15_dir, golden_tok, golden_model):
    vocab = PlannerVocab.from_tokenizer(golden_tok)
    cases = golden_lm_cases(golden_v15_dir)
    assert cases
    for name in cases:
        case, t = load_lm_case(golden_v15_dir, name)
        for n in range(len(case["calls"])):
            grammar = _replay_call(golden_model, vocab, golden_tok, case, t, n)
            assert grammar.finished, f"{name} call {n}: grammar did not end with the recorded tokens"


def test_v15_planner_grammar_golden_vocab(golden_v15_dir, golden_tok):
    """The vocab facts the official processor reported (lm_setup.json), found from the tokenizer."""
    case, _ = load_lm_case(golden_v15_dir, golden_lm_cases(golden_v15_dir)[0])
    facts = case["setup"]["tokenizer"]
    vocab = PlannerVocab.from_tokenizer(golden_tok)
    assert PlannerVocab.from_tokenizer(golden_tok) is vocab  # cached per tokenizer
    cp = facts["constrained_processor"]
    assert vocab.vocab_size == cp["vocab_size"] and vocab.eos_id == cp["eos_token_id"]
    assert len(vocab.audio_code_ids) == cp["num_audio_code_token_ids"]
    assert int(vocab.audio_code_ids.min()) == cp["first"] and int(vocab.audio_code_ids.max()) == cp["last"]
    assert vocab.pad_id == facts["pad_token_id"]
    assert vocab.think_start_id == facts["ids"]["<think>"] and vocab.think_end_id == facts["ids"]["</think>"]


def test_v15_planner_grammar_golden_text(golden_v15_dir):
    """Outputs parse to the recorded metadata and codes; the codes prompt holds format_cot(metadata)."""
    for name in golden_lm_cases(golden_v15_dir):
        case, t = load_lm_case(golden_v15_dir, name)
        metadata = case["result_metadata"]
        metadata = metadata[0] if isinstance(metadata, list) else metadata
        cot_calls = [c for c in case["calls"] if c["generation_phase"] == "cot"]
        if cot_calls:
            assert parse_plan_output(cot_calls[0]["output_text"])[0] == metadata, name
        else:
            assert metadata == {k: v for k, v in case["request"]["user_metadata"].items() if v is not None}
        cot = format_cot(metadata)
        assert cot == case["cot_text_for_codes_phase"], name
        assert cot in case["prompts"]["codes"], name
        codes_calls = [c for c in case["calls"] if c["generation_phase"] == "codes"]
        strings = case["result_audio_codes_string"]
        strings = strings if isinstance(strings, list) else [strings]
        keys = (
            ["result/audio_codes"]
            if "result/audio_codes" in t
            else [f"result/audio_codes_{i}" for i in range(len(strings))]
        )
        for call, string, key in zip(codes_calls, strings, keys, strict=True):
            _, code_text = parse_plan_output(call["output_text"])
            assert code_text == string and codes_from_text(code_text) == t[key].tolist(), name
            assert codes_to_text(t[key].tolist()) == string, name
            assert len(codes_from_text(call["output_text"])) == case["num_codes"], name


# --- fixed mode -------------------------------------------------------------------------------------------


def _special_ids(vocab: PlannerVocab) -> list[int]:
    ids = [vocab.eos_id, vocab.pad_id, vocab.think_start_id, vocab.think_end_id]
    return [i for i in ids if i is not None]


def _sample_phase1(
    model, tok, grammar: PlanGrammar, prompt: torch.Tensor, seed: int, temperature: float
) -> list[int]:
    """Decode phase 1 with ``grammar`` (KV cache, one generator per row as songflow does)."""
    gen = torch.Generator().manual_seed(seed)
    out = model(input_ids=prompt, use_cache=True)
    tokens: list[int] = []
    for _ in range(4032):
        scores = grammar.constrain(out.logits[0, -1].float().clone())
        probs = torch.softmax(scores / temperature, -1)
        token = int(torch.multinomial(probs, 1, generator=gen))
        grammar.advance(token)
        tokens.append(token)
        if grammar.finished:
            break
        out = model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens


def test_v15_planner_grammar_golden_fixed_zh_caption(golden_v15_dir, golden_tok, golden_model):
    """zh_sampled_caption: where the official caption admits <|endoftext|> and the other specials (and the
    recorded run ends phase 1 on it), the fixed grammar admits none; sampled to the end it keeps the user's
    duration and time signature."""
    case, t = load_lm_case(golden_v15_dir, "zh_sampled_caption")
    vocab = PlannerVocab.from_tokenizer(golden_tok)
    call = case["calls"][0]
    max_duration = case["setup"]["tokenizer"]["constrained_processor"]["max_duration"]
    legacy = _grammar_for_call(vocab, golden_tok, call, max_duration, legacy=True)
    fixed = _grammar_for_call(vocab, golden_tok, call, max_duration, legacy=False)
    specials = _special_ids(vocab)
    caption_steps = 0
    for step, token in enumerate(t["call0/steps/token"][:, 0].tolist()):
        scores = torch.randn(vocab.vocab_size, generator=torch.Generator().manual_seed(step))
        a, b = (
            torch.isfinite(legacy.constrain(scores.clone())),
            torch.isfinite(fixed.constrain(scores.clone())),
        )
        if legacy.state == "caption_value":
            caption_steps += 1
            assert a[specials].all() and not b[specials].any() and not b[vocab.audio_code_ids].any()
            if token in specials:
                assert not b[token]  # the recorded early stop is impossible
                break
        else:
            assert torch.equal(a, b)
        legacy.advance(token)
        fixed.advance(token)
    assert caption_steps > 0
    prompt = t["call0/input_ids"]
    with torch.no_grad():
        grammar = _grammar_for_call(vocab, golden_tok, call, max_duration, legacy=False)
        tokens = _sample_phase1(golden_model, golden_tok, grammar, prompt, case["request"]["seed"], 0.85)
    assert grammar.finished and tokens[-1] == vocab.eos_id
    assert tokens[0] == vocab.think_start_id and not set(tokens[1:-1]) & set(specials)
    meta, _ = parse_plan_output(golden_tok.decode(tokens))
    for key, value in call["user_metadata"].items():
        assert str(meta[key]) == str(value)
    assert (
        30 <= meta["bpm"] <= 300
        and meta["keyscale"] in VALID_KEYSCALES
        and meta["language"] in VALID_LANGUAGES
    )
    assert "caption" in meta


def _drive_forced(grammar: PlanGrammar, vocab: PlannerVocab) -> None:
    """Advance while the grammar allows exactly one token."""
    while True:
        allowed = torch.isfinite(grammar.constrain(torch.zeros(vocab.vocab_size))).nonzero().flatten()
        if len(allowed) != 1 or grammar.finished:
            return
        grammar.advance(int(allowed[0]))


def _to_caption_line_start(tok, *, legacy: bool) -> tuple[PlanGrammar, PlannerVocab]:
    vocab = PlannerVocab.from_tokenizer(tok)
    g = PlanGrammar(vocab, tok, phase="cot", user_metadata={"bpm": 90}, skip_caption=False,
                    skip_language=True, stop_at_reasoning=True, target_codes=None, legacy=legacy)  # fmt: skip
    _drive_forced(g, vocab)
    assert g.state == "caption_value"
    for token in tok.encode(" soft piano\n", add_special_tokens=False):
        assert torch.isfinite(g.constrain(torch.zeros(vocab.vocab_size)))[token]
        g.advance(token)
    return g, vocab


def test_v15_planner_grammar_caption_newline_stays_constrained(tiny_tok):
    """A caption line break followed by a non-space argmax: the official machine returns the scores
    unconstrained (audio codes, specials, no cap) until a ':'; the fixed one allows only an indented
    continuation or the next field name, and its cap ends the caption."""
    x_token = tiny_tok.encode("X", add_special_tokens=False)[0]
    d_token = tiny_tok.encode("duration:", add_special_tokens=False)[0]
    for legacy in (True, False):
        g, vocab = _to_caption_line_start(tiny_tok, legacy=legacy)
        scores = torch.zeros(vocab.vocab_size)
        scores[x_token] = 5.0
        allowed = torch.isfinite(g.constrain(scores))
        if legacy:
            assert allowed.all()
            g.advance(x_token)
            for _ in range(600):  # no ':' -> unconstrained for ever, past the 512-token cap
                assert torch.isfinite(g.constrain(torch.zeros(vocab.vocab_size))).all()
                g.advance(x_token)
            continue
        assert not allowed[x_token] and allowed[d_token] and not allowed[vocab.audio_code_ids].any()
        assert not allowed[_special_ids(vocab)].any()
        starts = [i for i in allowed.nonzero().flatten().tolist() if i != d_token]
        assert starts and all(tiny_tok.decode([i]).startswith(" ") for i in starts)
        space = tiny_tok.encode(" a", add_special_tokens=False)
        steps = 0
        while g.state == "caption_value":
            allowed = torch.isfinite(g.constrain(torch.zeros(vocab.vocab_size)))
            if g.cap_tokens >= 512:
                assert allowed.sum() == 1
            token = (
                space[steps % len(space)] if allowed[space[steps % len(space)]] else int(allowed.nonzero()[0])
            )
            g.advance(token)
            steps += 1
            assert steps < 600
        assert g.state == "duration_name"


# --- properties -------------------------------------------------------------------------------------------

_CAPTIONS = [
    "soft piano, rain",
    "lofi: mellow keys",
    "line one\n  line two",
    "日本語のバラード",
    "#1 hit - yes",
]


@st.composite
def _user_metadata(draw, max_duration_s: int) -> dict:
    pool = {
        "bpm": st.integers(30, 300),
        "duration": st.integers(10, max_duration_s),
        "keyscale": st.sampled_from(sorted(VALID_KEYSCALES)),
        "language": st.sampled_from(sorted(VALID_LANGUAGES)),
        "timesignature": st.sampled_from(["2", "3", "4", "6"]),
        "caption": st.sampled_from(_CAPTIONS),
    }
    keys = draw(st.lists(st.sampled_from(sorted(pool)), unique=True))
    return {k: draw(pool[k]) for k in keys}


def _run(
    grammar: PlanGrammar, vocab: PlannerVocab, gen: torch.Generator, sample: bool, limit: int
) -> list[int]:
    tokens = []
    for _ in range(limit):
        scores = grammar.constrain(3.0 * torch.randn(vocab.vocab_size, generator=gen))
        token = (
            int(torch.multinomial(torch.softmax(scores, -1), 1, generator=gen))
            if sample
            else int(scores.argmax())
        )
        grammar.advance(token)
        tokens.append(token)
        if grammar.finished:
            break
    return tokens


def _check_plan(tok, data, max_duration_s: int) -> None:
    """Phase 1 then phase 2 driven by random scores: a valid plan that keeps the user's fields, then
    exactly target_codes codes and EOS."""
    vocab = PlannerVocab.from_tokenizer(tok)
    user = data.draw(_user_metadata(max_duration_s))
    skip_caption, skip_language, sample = (
        data.draw(st.booleans()),
        data.draw(st.booleans()),
        data.draw(st.booleans()),
    )
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    g = PlanGrammar(vocab, tok, phase="cot", user_metadata=user, skip_caption=skip_caption,
                    skip_language=skip_language, stop_at_reasoning=True, target_codes=None,
                    max_duration_s=max_duration_s)  # fmt: skip
    tokens = _run(g, vocab, gen, sample, 4000)
    assert g.finished and tokens[-1] == vocab.eos_id and tokens[0] == vocab.think_start_id
    assert not set(tokens[1:-1]) & set(_special_ids(vocab)) and not set(tokens) & set(vocab.code_of_id)
    meta, codes = parse_plan_output(tok.decode(tokens))
    assert codes == ""
    assert isinstance(meta["bpm"], int) and 30 <= meta["bpm"] <= 300
    assert isinstance(meta["duration"], int) and 10 <= meta["duration"] <= max_duration_s
    assert meta["keyscale"] in VALID_KEYSCALES and meta["timesignature"] in ("2", "3", "4", "6")
    assert ("language" in meta) == (not skip_language) and meta.get("language", "en") in VALID_LANGUAGES
    assert ("caption" in meta) == (not skip_caption)
    for key, value in user.items():
        if key == "caption" and not skip_caption:
            assert meta[key] == " ".join(line.strip() for line in value.split("\n"))
        elif key != "caption" and not (key == "language" and skip_language):
            assert str(meta[key]) == str(value), key
    n_codes = data.draw(st.integers(0, 40))
    codes = PlanGrammar(vocab, tok, phase="codes", user_metadata=None, skip_caption=True, skip_language=True,
                        stop_at_reasoning=False, target_codes=n_codes)  # fmt: skip
    mask = codes.codes_only()
    assert mask is not None and int(mask.sum()) == len(vocab.audio_code_ids) + 1 and mask[vocab.eos_id]
    out = _run(codes, vocab, gen, sample, n_codes + 10)
    assert codes.finished and len(out) == n_codes + 1 and out[-1] == vocab.eos_id
    assert all(t in vocab.code_of_id for t in out[:-1])
    assert codes_from_text(tok.decode(out)) == [vocab.code_of_id[t] for t in out[:-1]]


@HYPO
@given(data=st.data())
def test_v15_planner_grammar_property_tiny_tokenizer(tiny_tok, data):
    _check_plan(tiny_tok, data, data.draw(st.sampled_from([240, 600])))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_v15_planner_grammar_property_golden_tokenizer(golden_tok, data):
    _check_plan(golden_tok, data, 240)


def test_v15_planner_grammar_target_duration_and_errors(tiny_tok):
    """target_codes in phase cot forces duration = target_codes // 5 (official target_duration); bad
    settings raise ConfigError."""
    vocab = PlannerVocab.from_tokenizer(tiny_tok)
    g = PlanGrammar(vocab, tiny_tok, phase="cot", user_metadata=None, skip_caption=True, skip_language=True,
                    stop_at_reasoning=True, target_codes=62)  # fmt: skip
    tokens = _run(g, vocab, torch.Generator().manual_seed(0), False, 400)
    assert parse_plan_output(tiny_tok.decode(tokens))[0]["duration"] == 12
    for bad in ({"skip_genres": False}, {"max_duration_s": 5}, {"phase": "lyrics"}, {"target_codes": -1}):
        kwargs = dict(phase="cot", user_metadata=None, skip_caption=True, skip_language=True,
                      stop_at_reasoning=True, target_codes=None) | bad  # fmt: skip
        with pytest.raises(ConfigError):
            PlanGrammar(vocab, tiny_tok, **kwargs)


def test_v15_planner_grammar_special_text_in_user_field(tiny_tok):
    vocab = PlannerVocab.from_tokenizer(tiny_tok)
    kwargs = dict(
        phase="cot", skip_caption=False, skip_language=True, stop_at_reasoning=True, target_codes=None
    )
    with pytest.raises(ConfigError, match="special-token"):
        PlanGrammar(vocab, tiny_tok, user_metadata={"caption": "pop <|im_end|> rock"}, **kwargs)
    PlanGrammar(vocab, tiny_tok, user_metadata={"caption": "pop <|im_end|> rock"}, legacy=True, **kwargs)


def test_v15_planner_grammar_legacy_caption_ending_field(tiny_tok):
    """Official caption ending: the unconstrained tokens after a line break that spell a known field name
    and ':' jump straight to that field's value (here keyscale, skipping duration)."""
    g, vocab = _to_caption_line_start(tiny_tok, legacy=True)
    for token in tiny_tok.encode("keyscale:", add_special_tokens=False):
        scores = torch.zeros(vocab.vocab_size)
        scores[token] = 1.0
        assert torch.isfinite(g.constrain(scores)).all()
        g.advance(token)
    assert g.state == "keyscale_value"
    _run(g, vocab, torch.Generator().manual_seed(1), False, 100)
    assert g.finished


# --- CoT YAML ---------------------------------------------------------------------------------------------


def _reference_cot(metadata: dict) -> str:
    """The official _format_metadata_as_cot with PyYAML (the oracle)."""
    items = {}
    for key in ("bpm", "caption", "duration", "keyscale", "language", "timesignature"):
        value = metadata.get(key)
        if value is None:
            continue
        if key == "timesignature" and isinstance(value, str) and value.endswith("/4"):
            value = value.split("/")[0]
        if isinstance(value, str) and value.isdigit():
            try:
                value = int(value)
            except ValueError:
                pass
        items[key] = value
    body = yaml.dump(items, allow_unicode=True, sort_keys=True).strip() if items else ""
    return f"<think>\n{body}\n</think>"


_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"])
    | st.sampled_from(list(" \n\t:#-'\"?,[]{}&*!|>%@`\\~=<\x85\u2028\u2029\ufeff\xa0é中😀")),
    max_size=200,
) | st.sampled_from(["", "yes", "No", "null", "~", "123", "0x1F", "1.5e3", "12:30", "2024-01-01", "=",
                     "<<", "---", "... x", "- item", "a: b", "a #b", " lead", "trail ", "it's", "x\n\ny",
                     ("word " * 30).strip()])  # fmt: skip


@settings(max_examples=50, deadline=None)
@given(
    caption=_TEXT,
    bpm=st.none() | st.integers(0, 400) | st.sampled_from(["120", "abc"]),
    duration=st.none()
    | st.integers(0, 700)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["90"]),
    keyscale=st.none() | st.sampled_from(sorted(VALID_KEYSCALES)) | _TEXT,
    language=st.none() | st.sampled_from(sorted(VALID_LANGUAGES)),
    timesignature=st.none() | st.sampled_from(["4", "3/4", "6/8", "4/4", "2"]),
)
def test_v15_planner_format_cot_matches_pyyaml(caption, bpm, duration, keyscale, language, timesignature):
    metadata = dict(caption=caption, bpm=bpm, duration=duration, keyscale=keyscale, language=language,
                    timesignature=timesignature)  # fmt: skip
    assert format_cot(metadata) == _reference_cot(metadata)


@settings(max_examples=50, deadline=None)
@given(caption=_TEXT)
def test_v15_planner_format_cot_caption_only_matches_pyyaml(caption):
    assert format_cot({"caption": caption}) == _reference_cot({"caption": caption})


def test_v15_planner_parse_plan_output_examples():
    text = "<think>\nbpm: 73\ncaption: A calm piano\n  melody, rain\nduration: 273\nkeyscale: G major\n"
    text += "</think>\n\n"
    meta, codes = parse_plan_output(text + codes_to_text([5, 63999]))
    assert meta == {"bpm": 73, "caption": "A calm piano melody, rain", "duration": 273, "keyscale": "G major"}
    assert codes_from_text(codes) == [5, 63999]
    assert parse_plan_output("<think>\nbpm: fast\n<|im_end|>")[0] == {"bpm": "fast"}
    # an empty <think></think> falls back to the whole text, whose "<..." lines are skipped (as upstream)
    assert parse_plan_output("<think></think>bpm: 90\n")[0] == {}
    assert parse_plan_output("<think></think>\nbpm: 90\n")[0] == {"bpm": 90}
