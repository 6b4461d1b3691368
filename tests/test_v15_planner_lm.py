"""The 5 Hz LM runtime: strict loading, the PlannerLM wrapper (cache, restricted head), the decode loop
(CFG, sampling order, per-row generators, stops) and random LM folders — against the official fixtures
(``../shared/golden/acestep_v15/lm``) and independent re-computations."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_close, golden_lm_cases, load_lm_case
from songflow.checkpoint.acestep_v15 import load_v15_lm, load_v15_lm_tokenizer
from songflow.errors import CheckpointError, ConfigError
from songflow.sampling.lm_decode import (
    DecodeSettings,
    DecodeTrace,
    decode,
    left_pad,
    max_new_tokens_for,
    repetition_penalty,
    sample,
    top_k_filter,
    top_p_filter,
)

NEG_INF_STORED = -1e38  # the fixtures store -inf as a large negative finite value


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------


class CodesGrammar:
    """Test stand-in for the codes phase of PlanGrammar: audio codes 0..63999 + EOS allowed; EOS blocked
    until ``target`` codes, then only EOS (ids found from the tokenizer, as the official processor)."""

    def __init__(self, tokenizer, vocab_size: int, target: int):
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        codes = [
            i
            for i, t in enumerate(tokens)
            if (m := re.fullmatch(r"<\|audio_code_(\d+)\|>", t)) and int(m[1]) < 64000
        ]
        self.eos = tokenizer.eos_token_id
        self.mask = torch.zeros(vocab_size, dtype=torch.bool)
        self.mask[codes] = True
        self.mask[self.eos] = True
        self.target, self.count = target, 0

    def codes_only(self):
        return self.mask

    def constrain(self, scores):
        scores = scores.masked_fill(~self.mask, float("-inf"))
        if self.count < self.target:
            scores[self.eos] = float("-inf")
        else:
            eos = scores[self.eos].clone()
            scores.fill_(float("-inf"))
            scores[self.eos] = eos
        return scores

    def advance(self, token_id):
        self.count += token_id != self.eos


class ForceAt:
    """Grammar stand-in that allows only ``token`` at step ``at`` (anything before)."""

    def __init__(self, token: int, at: int):
        self.token, self.at, self.step = token, at, 0

    def codes_only(self):
        return None

    def constrain(self, scores):
        if self.step == self.at:
            keep = scores[self.token].clone()
            scores.fill_(float("-inf"))
            scores[self.token] = keep
        return scores

    def advance(self, token_id):
        self.step += 1


@pytest.fixture(scope="module")
def lm(golden_v15_lm_dir):
    return load_v15_lm(golden_v15_lm_dir)


@pytest.fixture(scope="module")
def static_lm(golden_v15_lm_dir):
    return load_v15_lm(golden_v15_lm_dir, cache="static")


def _fixture(values: torch.Tensor) -> torch.Tensor:
    return values.masked_fill(values <= NEG_INF_STORED, float("-inf"))


def _prompts(golden_v15_dir, name="instrumental_bpm_cfg2"):
    case, t = load_lm_case(golden_v15_dir, name)
    return case, t, t["prompts/codes/input_ids"][0].tolist(), t["prompts/codes_uncond/input_ids"][0].tolist()


# --------------------------------------------------------------------------------------------------------
# fixtures: forward, CFG batch, seeded replay, budgets
# --------------------------------------------------------------------------------------------------------


def test_v15_planner_parity_forward(golden_v15_dir, lm):
    cases = [
        n
        for n in golden_lm_cases(golden_v15_dir)
        if "forward/cot_prompt/logits" in load_lm_case(golden_v15_dir, n)[1]
    ]
    assert cases, "no LM case records forward/cot_prompt"
    for name in cases:
        _, t = load_lm_case(golden_v15_dir, name)
        ids = t["forward/cot_prompt/input_ids"]
        assert_close(
            lm.logits(ids, torch.ones_like(ids)), t["forward/cot_prompt/logits"], name=f"{name} logits"
        )
        hidden = lm.hidden_states(ids, torch.ones_like(ids))
        assert_close(hidden, t["forward/cot_prompt/last_hidden_state"], name=f"{name} hidden")


def test_v15_planner_cfg_batch_golden(golden_v15_dir, lm):
    """Left-padded [cond; uncond] batch, teacher-forced with the recorded tokens: raw logits of both rows,
    the scores after CFG + EOS blocking, and (greedy) the tokens themselves."""
    case, t, cond, uncond = _prompts(golden_v15_dir)
    call = next(i for i, c in enumerate(case["calls"]) if c["cfg_scale"] > 1)
    key = f"call{call}"
    ids, mask = left_pad([cond, uncond], lm.pad_id)
    assert torch.equal(ids, t[f"{key}/batch_input_ids"]) and torch.equal(
        mask, t[f"{key}/batch_attention_mask"]
    )
    recorded = t[f"{key}/steps/token"][:, 0].tolist()
    run = case["calls"][call]
    trace = DecodeTrace(top=16)
    grammar = CodesGrammar(lm.tokenizer, lm.vocab_size, case["num_codes"])
    cfg = DecodeSettings(
        temperature=run["temperature"], cfg_scale=run["cfg_scale"], max_new_tokens=run["max_new_tokens"]
    )
    out = decode(
        lm,
        [cond],
        uncond_prompts=[uncond],
        grammars=[grammar],
        settings=cfg,
        force_tokens=[recorded],
        trace=trace,
    )
    assert out[0] == recorded
    raw = torch.stack([s.raw for s in trace.steps])
    assert_close(raw, t[f"{key}/steps/raw_top_values"], name="raw top values [cond, uncond]")
    assert torch.equal(torch.stack([s.raw_ids for s in trace.steps]), t[f"{key}/steps/raw_top_ids"])
    final, expected = (
        torch.stack([s.final for s in trace.steps]),
        _fixture(t[f"{key}/steps/final_top_values"]),
    )
    assert torch.equal(torch.isfinite(final), torch.isfinite(expected))
    finite = torch.isfinite(expected)
    assert_close(final[finite], expected[finite], name="final top values")
    greedy = decode(
        lm,
        [cond],
        uncond_prompts=[uncond],
        grammars=[CodesGrammar(lm.tokenizer, lm.vocab_size, case["num_codes"])],
        settings=cfg,
    )
    assert greedy[0] == recorded


def test_v15_planner_first_steps_full_vocab_golden(golden_v15_dir, lm):
    case, t, cond, uncond = _prompts(golden_v15_dir)
    key = f"call{next(i for i, c in enumerate(case['calls']) if c['cfg_scale'] > 1)}"
    recorded = t[f"{key}/steps/token"][:, 0].tolist()
    trace = DecodeTrace()
    grammar = CodesGrammar(lm.tokenizer, lm.vocab_size, case["num_codes"])
    cfg = DecodeSettings(
        temperature=0.0, cfg_scale=2.0, max_new_tokens=t[f"{key}/first_steps/raw_logits"].shape[0]
    )
    decode(
        lm,
        [cond],
        uncond_prompts=[uncond],
        grammars=[grammar],
        settings=cfg,
        force_tokens=[recorded],
        trace=trace,
    )
    assert_close(
        torch.stack([s.raw for s in trace.steps]), t[f"{key}/first_steps/raw_logits"], name="raw logits"
    )
    final, expected = (
        torch.stack([s.final for s in trace.steps]),
        _fixture(t[f"{key}/first_steps/final_logits"]),
    )
    assert torch.equal(torch.isfinite(final), torch.isfinite(expected))
    assert_close(final[torch.isfinite(final)], expected[torch.isfinite(expected)], name="final logits")


def test_v15_planner_seeded_batch_replays_golden(golden_v15_dir, lm):
    """The batch request's phase-2 runs (one torch.manual_seed per item upstream) come out bit for bit from
    one batched decode with one generator per row."""
    case, t = load_lm_case(golden_v15_dir, "batch2_seeds_sampled")
    calls = [i for i, c in enumerate(case["calls"]) if c["generation_phase"] == "codes"]
    prompts = [t[f"call{i}/input_ids"][0].tolist() for i in calls]
    recorded = [t[f"call{i}/steps/token"][:, 0].tolist() for i in calls]
    run = case["calls"][calls[0]]
    n_codes = len(recorded[0]) - 1
    grammars = [CodesGrammar(lm.tokenizer, lm.vocab_size, n_codes) for _ in calls]
    gens = [torch.Generator().manual_seed(s) for s in case["request"]["seeds"]]
    cfg = DecodeSettings(temperature=run["temperature"], max_new_tokens=run["max_new_tokens"])
    assert decode(lm, prompts, grammars=grammars, settings=cfg, generators=gens) == recorded


def test_v15_planner_max_new_tokens_golden(golden_v15_dir):
    for name in golden_lm_cases(golden_v15_dir):
        case, _ = load_lm_case(golden_v15_dir, name)
        max_s = case["setup"]["tokenizer"]["constrained_processor"]["max_duration"]
        for call in case["calls"]:
            got = max_new_tokens_for(call["target_duration"], call["generation_phase"], max_duration_s=max_s)
            assert got == call["max_new_tokens"], (name, call["generation_phase"])


def test_max_new_tokens_rules():
    assert max_new_tokens_for(60, "codes") == 310
    assert max_new_tokens_for(60, "cot") == 800
    assert max_new_tokens_for(5, "codes") == 60  # clamped to 10 s
    assert max_new_tokens_for(None, "cot") == 4032 and max_new_tokens_for(None, "cot", fallback=None) == 4032
    assert max_new_tokens_for(600, "cot") == 3500
    with pytest.raises(ConfigError):
        max_new_tokens_for(10, "lyrics")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# the wrapper: cache, restricted head, static cache
# --------------------------------------------------------------------------------------------------------


def test_cached_decode_equals_uncached_forwards(golden_v15_dir, lm):
    _, _, cond, uncond = _prompts(golden_v15_dir)
    cond, uncond = cond[:40], uncond[:25]
    trace = DecodeTrace()
    cfg = DecodeSettings(temperature=0.0, cfg_scale=1.5, max_new_tokens=8)
    out = decode(lm, [cond], uncond_prompts=[uncond], settings=cfg, trace=trace)[0]
    for s, step in enumerate(trace.steps):
        ids, mask = left_pad([cond + out[:s], uncond + out[:s]], lm.pad_id)
        assert_close(step.raw, lm.logits(ids, mask)[:, -1], name=f"step {s}")


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, 772), min_size=1, max_size=60), st.integers(0, 700), st.integers(1, 70))
def test_restricted_head_equals_full_head(golden_v15_lm_dir, ids, start, width):
    lm = _shared_lm(golden_v15_lm_dir)
    hidden = torch.randn(3, lm.config.hidden_size, generator=torch.Generator().manual_seed(len(ids)))
    full = (hidden @ lm.model.lm_head.weight.T).float()
    for chosen in (
        torch.tensor(ids),
        torch.arange(start, min(773, start + width)),
        torch.tensor([5, *range(300, 700)]),
    ):
        head = lm.restricted_head(chosen)
        assert torch.equal(head.ids, torch.unique(chosen))
        assert_close(head(hidden, lm.model.lm_head.weight).float(), full[:, head.ids], name="restricted head")


_LM_CACHE: dict[Path, object] = {}


def _shared_lm(folder):
    if folder not in _LM_CACHE:
        _LM_CACHE[folder] = load_v15_lm(folder)
    return _LM_CACHE[folder]


def test_restricted_head_used_in_codes_phase_gives_same_tokens(golden_v15_dir, lm):
    _, _, cond, uncond = _prompts(golden_v15_dir)
    calls = []
    original = lm.restricted_head

    def spy(ids):
        calls.append(ids.numel())
        return original(ids)

    lm.restricted_head = spy
    try:
        cfg = DecodeSettings(temperature=1.0, cfg_scale=2.0, top_k=50, top_p=0.9, max_new_tokens=20)
        fast = decode(
            lm,
            [cond],
            uncond_prompts=[uncond],
            grammars=[CodesGrammar(lm.tokenizer, lm.vocab_size, 12)],
            settings=cfg,
            generators=[torch.Generator().manual_seed(3)],
        )
    finally:
        del lm.restricted_head
    assert calls, "the codes phase did not use the restricted head"
    full = decode(
        lm,
        [cond],
        uncond_prompts=[uncond],
        grammars=[CodesGrammar(lm.tokenizer, lm.vocab_size, 12)],
        settings=cfg,
        generators=[torch.Generator().manual_seed(3)],
        trace=DecodeTrace(top=1),
    )
    assert fast == full and len(fast[0]) == 13


def test_static_cache_equals_dynamic_cache(golden_v15_dir, lm, static_lm):
    _, _, cond, uncond = _prompts(golden_v15_dir)
    prompts, twins = [cond, cond[:-30]], [uncond, uncond[10:]]
    for cfg in (
        DecodeSettings(temperature=0.0, max_new_tokens=12),
        DecodeSettings(temperature=0.9, cfg_scale=2.0, top_p=0.95, max_new_tokens=30),
    ):
        outs = []
        for model in (lm, static_lm):
            grammars = [CodesGrammar(lm.tokenizer, lm.vocab_size, n) for n in (6, 14)]
            gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
            outs.append(
                decode(model, prompts, uncond_prompts=twins, grammars=grammars, settings=cfg, generators=gens)
            )
        assert outs[0] == outs[1]


def test_counters_and_offload(lm):
    lm.reset_counters()
    decode(lm, [[257, 10, 11]], settings=DecodeSettings(temperature=0.0, max_new_tokens=5))
    assert lm.prompt_tokens == 3 and lm.new_tokens == 4 and lm.prefills == 1 and lm.steps == 4
    assert lm.tokens_per_s() > 0
    assert lm.offload().device.type == "cpu"


# --------------------------------------------------------------------------------------------------------
# the decode loop: order of the score rules, stops, rows
# --------------------------------------------------------------------------------------------------------


def _nucleus(scores: torch.Tensor, p: float) -> set[int]:
    """Independent top-p: the smallest set of most likely ids whose probability reaches p."""
    probs = torch.softmax(scores.double(), -1).tolist()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, total = set(), 0.0
    for i in order:
        kept.add(i)
        total += probs[i]
        if total > p:
            break
    return kept


# scores 0.01 apart: distinct probabilities, so "the most likely ids" is well defined (values like 0 and
# 1e-38 tie in probability and either may be kept)
_DISTINCT_SCORES = st.lists(st.integers(-800, 800), min_size=2, max_size=40, unique=True).map(
    lambda hundredths: [h / 100 for h in hundredths]
)


@settings(max_examples=40, deadline=None)
@given(_DISTINCT_SCORES, st.floats(0.05, 0.95))
def test_top_p_filter_matches_independent_nucleus(values, p):
    scores = torch.tensor([values])
    kept = torch.isfinite(top_p_filter(scores.clone(), p)[0]).nonzero().flatten().tolist()
    assert set(kept) == _nucleus(scores[0], p)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-8, 8, width=32), min_size=2, max_size=40, unique=True), st.integers(1, 45))
def test_top_k_filter_keeps_the_k_largest(values, k):
    scores = torch.tensor([values])
    kept = set(torch.isfinite(top_k_filter(scores.clone(), k)[0]).nonzero().flatten().tolist())
    assert kept == set(sorted(range(len(values)), key=lambda i: -values[i])[: min(k, len(values))])


def test_repetition_penalty_matches_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(50, generator=gen) * 3
    seen = torch.tensor([3, 7, 7, 11, 49, 0])
    expected = RepetitionPenaltyLogitsProcessor(1.3)(seen.unsqueeze(0), scores.unsqueeze(0).clone())[0]
    assert torch.equal(repetition_penalty(scores.clone(), seen, 1.3), expected)


def test_sample_greedy_and_seeded():
    scores = torch.tensor([0.1, 2.0, -1.0, 1.9])
    assert sample(scores, 0.0, None) == 1
    draws = [sample(scores, 1.0, torch.Generator().manual_seed(9)) for _ in range(3)]
    assert len(set(draws)) == 1
    torch.manual_seed(9)
    assert draws[0] == int(torch.multinomial(torch.softmax(scores / 1.0, -1), 1))


def test_decode_order_top_p_before_temperature(lm):
    """The scores handed to sampling are nucleus-filtered on the un-tempered logits (after the penalty)."""
    prompt = [257, 40, 41, 42, 43, 40, 41]
    trace = DecodeTrace()
    cfg = DecodeSettings(temperature=3.0, top_p=0.6, top_k=200, repetition_penalty=1.4, max_new_tokens=6)
    decode(lm, [prompt], settings=cfg, generators=[torch.Generator().manual_seed(0)], trace=trace)
    seen = list(prompt)
    for step in trace.steps:
        expected = repetition_penalty(step.raw[0].clone(), torch.tensor(seen), 1.4)
        expected = top_k_filter(expected.unsqueeze(0), 200)[0]
        assert set(torch.isfinite(step.final[0]).nonzero().flatten().tolist()) == _nucleus(expected, 0.6)
        seen.append(step.tokens[0])


@pytest.mark.parametrize("which", ["eos", "pad"])
def test_decode_stops_on_eos_or_pad(lm, which):
    stop = lm.eos_id if which == "eos" else lm.pad_id
    out = decode(
        lm,
        [[257, 50, 51], [257, 60]],
        grammars=[ForceAt(stop, 3), None],
        settings=DecodeSettings(temperature=0.0, max_new_tokens=9),
    )
    assert len(out[0]) == 4 and out[0][-1] == stop
    assert stop not in out[1][:-1] and (len(out[1]) == 9 or out[1][-1] in (lm.eos_id, lm.pad_id))


def test_batch_of_seeded_rows_equals_singles(golden_v15_dir, lm):
    _, _, cond, uncond = _prompts(golden_v15_dir)
    prompts, twins, seeds, targets = [cond, cond[:-20]], [uncond, uncond[5:]], (21, 22), (9, 16)
    cfg = DecodeSettings(temperature=1.0, cfg_scale=2.0, top_p=0.95, max_new_tokens=25)
    grammars = [CodesGrammar(lm.tokenizer, lm.vocab_size, n) for n in targets]
    batch = decode(
        lm,
        prompts,
        uncond_prompts=twins,
        grammars=grammars,
        settings=cfg,
        generators=[torch.Generator().manual_seed(s) for s in seeds],
    )
    for i in range(2):
        single = decode(
            lm,
            [prompts[i]],
            uncond_prompts=[twins[i]],
            settings=cfg,
            grammars=[CodesGrammar(lm.tokenizer, lm.vocab_size, targets[i])],
            generators=[torch.Generator().manual_seed(seeds[i])],
        )
        assert batch[i] == single[0]
        assert len(batch[i]) == targets[i] + 1 and batch[i][-1] == lm.eos_id


def test_decode_bad_arguments(lm):
    with pytest.raises(ConfigError, match="unconditional"):
        decode(lm, [[1, 2]], settings=DecodeSettings(cfg_scale=2.0))
    with pytest.raises(ConfigError, match="at least one token"):
        decode(lm, [[]])
    with pytest.raises(ConfigError, match="grammars"):
        decode(lm, [[1], [2]], grammars=[None])
    for bad in (dict(temperature=-1), dict(top_p=1.5), dict(repetition_penalty=0), dict(max_new_tokens=0)):
        with pytest.raises(ConfigError):
            DecodeSettings(**bad)


# --------------------------------------------------------------------------------------------------------
# loading and random LM folders
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    from songflow.checkpoint.random_checkpoint import build_random_v15_lm

    return build_random_v15_lm(tmp_path_factory.mktemp("lm") / "acestep-5Hz-lm-tiny", seed=1)


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def test_random_tiny_lm_loads_and_decodes(tiny_lm_dir, golden_v15_lm_dir):
    lm = load_v15_lm(tiny_lm_dir)
    assert lm.dtype == torch.float32 and lm.model.lm_head.weight is lm.model.model.embed_tokens.weight
    tok, ref = lm.tokenizer, load_v15_lm_tokenizer(golden_v15_lm_dir)
    assert (
        len(tok) == len(ref) and tok.pad_token_id == ref.pad_token_id and tok.eos_token_id == ref.eos_token_id
    )
    for text in ("<think>", "</think>", "<|audio_code_0|>", "<|im_start|>"):
        assert tok.convert_tokens_to_ids(text) == ref.convert_tokens_to_ids(text)
    messages = [
        {"role": "system", "content": "# Instruction\nx\n\n"},
        {"role": "user", "content": "# Caption\ny\n"},
    ]
    for extra, gen in (([], True), ([{"role": "assistant", "content": "<think>\nbpm: 90\n</think>"}], False)):
        render = [
            t.apply_chat_template(messages + extra, tokenize=False, add_generation_prompt=gen)
            for t in (tok, ref)
        ]
        assert render[0] == render[1]
    prompt = tok(render[0])["input_ids"]
    out = decode(
        lm,
        [prompt],
        grammars=[CodesGrammar(tok, lm.vocab_size, 5)],
        settings=DecodeSettings(max_new_tokens=10),
        generators=[torch.Generator().manual_seed(0)],
    )
    assert len(out[0]) == 6 and out[0][-1] == tok.eos_token_id


def test_lm_sharded_weights_load(tiny_lm_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(tiny_lm_dir, tmp_path)
    state = load_file(folder / "model.safetensors")
    keys = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, folder / name)
    (folder / "model.safetensors").unlink()
    index = {"weight_map": {k: name for name, part in shards.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    ids = torch.tensor([[257, 30, 31]])
    assert torch.equal(load_v15_lm(folder).logits(ids), load_v15_lm(tiny_lm_dir).logits(ids))


def test_lm_loading_errors(tiny_lm_dir, tmp_path):
    cases = {
        "no weights": (
            lambda f: (f / "model.safetensors").unlink(),
            r"model\.safetensors.*missing.*songflow download",
        ),
        "bin only": (
            lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin"),
            r"pickle weights are never read",
        ),
        "wrong shapes": (lambda f: _edit_config(f, intermediate_size=96), r"shape mismatches"),
        "bad config": (lambda f: _edit_config(f, model_type="llama"), r"cannot read the LM config.*qwen3"),
        "no tokenizer": (lambda f: (f / "tokenizer.json").unlink(), r"misses tokenizer\.json"),
        "lm_head stored untied": (
            lambda f: _edit_config(f, tie_word_embeddings=False),
            r"missing from the file",
        ),
    }
    for name, (damage, message) in cases.items():
        folder = _copy(tiny_lm_dir, tmp_path / name.replace(" ", "_"))
        damage(folder)
        with pytest.raises(CheckpointError, match=message):
            load_v15_lm(folder)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_v15_lm(tmp_path / "acestep-5Hz-lm-nowhere")


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_lm_with_stored_tied_head_loads(tiny_lm_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(tiny_lm_dir, tmp_path)
    state = load_file(folder / "model.safetensors")
    save_file(
        {**state, "lm_head.weight": state["model.embed_tokens.weight"].clone()}, folder / "model.safetensors"
    )
    lm = load_v15_lm(folder)
    assert lm.model.lm_head.weight is lm.model.model.embed_tokens.weight


def test_unknown_cache_kind(golden_v15_lm_dir):
    with pytest.raises(ConfigError, match="cache"):
        load_v15_lm(golden_v15_lm_dir, cache="paged")  # type: ignore[arg-type]


@pytest.mark.slow
def test_random_full_size_lm(tmp_path):
    """The 0.6B folder: Qwen3-0.6B shape, the release vocabulary (217204 ids), loads and decodes a step."""
    from songflow.checkpoint.random_checkpoint import build_random_v15_lm

    folder = build_random_v15_lm(tmp_path / "acestep-5Hz-lm-0.6B", size="0.6B")
    lm = load_v15_lm(folder)
    tok = lm.tokenizer
    assert lm.vocab_size == len(tok) == 217204
    assert sum(p.numel() for p in lm.model.parameters()) == 1024 * 217204 + 28 * 15_730_944 + 1024
    ids = {
        t: tok.convert_tokens_to_ids(t)
        for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
    }
    assert list(ids.values()) == [151643, 151644, 151645, 151667, 151668]
    assert tok.convert_tokens_to_ids("<|audio_code_0|>") == 151669
    assert tok.convert_tokens_to_ids("<|audio_code_65534|>") == 217203
    out = decode(
        lm,
        [[151644, 84]],
        grammars=[CodesGrammar(tok, lm.vocab_size, 2)],
        settings=DecodeSettings(max_new_tokens=4),
    )
    assert len(out[0]) == 3


def test_planner_bench_on_the_tiny_lm(golden_v15_checkpoints, capsys):
    import argparse

    from songflow.interfaces.bench.speed_planner import run_planner_bench

    args = argparse.Namespace(planner=str(golden_v15_checkpoints), cfg=[2.0], duration=10.0, threads=None)
    (res,) = run_planner_bench(args)
    assert res["n_codes"] == 50 and res["cfg_scale"] == 2.0 and res["tokens"] > 50
    assert res["plan_s"] > 0 and res["tokens_per_s"] > 0 and res["load_s"] > 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_codes"] == 50
