"""The ACE-Step 1.5 planner flows against the official LM fixtures (``lm/<case>/``), end to end.

Each fixture case is one official ``generate_with_stop_condition`` run on the tiny random LM. With
``legacy_planner=True`` songflow must give the same prompts (strings and token ids), the same per-call token
budgets, tokens, output texts, metadata and audio codes. Sampled cases are replayed **exactly**: songflow
draws from one ``torch.Generator().manual_seed(seed)`` per row, which on this CPU build gives the stream the
official ``torch.manual_seed`` + ``multinomial`` drew. The per-step checks (allowed sets, top-16 scores,
full vectors of the first steps) are done **teacher-forced** on the recorded tokens, so they hold even
where a different torch build would sample differently. The fixed (default) flow is checked on the same
requests for the official bugs it fixes.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_close, golden_lm_cases, load_lm_case
from songflow.errors import ConfigError
from songflow.tasks.acestep_v15.planner import (
    PlannerOptions,
    PlannerTrace,
    SongPlan,
    check_user_metadata,
    describe_song,
    format_song,
    has_all_metas,
    plan_song,
    understand_codes,
)
from songflow.text import acestep_v15_lm_prompts as lp
from songflow.text.acestep_v15_plan_text import format_cot


@pytest.fixture(scope="module")
def lm(golden_v15_lm_dir):
    from songflow.checkpoint.acestep_v15 import load_v15_lm

    return load_v15_lm(golden_v15_lm_dir)


@pytest.fixture(scope="module")
def cases(golden_v15_dir) -> dict[str, tuple[dict, dict[str, torch.Tensor]]]:
    names = golden_lm_cases(golden_v15_dir)
    assert names, "no LM planner cases in the fixtures"
    return {name: load_lm_case(golden_v15_dir, name) for name in names}


# ------------------------------------------------------------------------------------------ helpers


def _options(case: dict, *, legacy: bool = True, **overrides: Any) -> PlannerOptions:
    rq = case["request"]
    values = dict(
        temperature=rq["temperature"],
        cfg_scale=rq.get("cfg_scale", 1.0),
        top_k=rq.get("top_k"),
        top_p=rq.get("top_p"),
        repetition_penalty=rq.get("repetition_penalty", 1.0),
        negative_prompt=rq.get("negative_prompt", lp.NO_USER_INPUT),
        use_cot_metas=rq.get("use_cot_metas", True),
        use_cot_caption=rq.get("use_cot_caption", True),
        use_cot_language=rq.get("use_cot_language", True),
        legacy_planner=legacy,
        max_duration_s=case["setup"]["tokenizer"]["constrained_processor"]["max_duration"],
    )
    values.update(overrides)
    return PlannerOptions(**values)


def _seeds(case: dict) -> tuple[list[int], int | None]:
    """(row seeds, the seed of a batch's shared phase 1): the official run seeded torch with
    ``request.seed`` before the call and with ``seeds[i]`` before each phase-2 item of a batch."""
    rq = case["request"]
    if rq.get("seeds"):
        return list(rq["seeds"]), rq.get("seed")
    return [rq.get("seed", 0)], None


def _plan(lm, case: dict, *, legacy: bool = True, trace=None, seeds=None, **overrides: Any) -> list[SongPlan]:
    rq = case["request"]
    row_seeds, cot_seed = _seeds(case)
    return plan_song(
        lm,
        caption=rq["caption"],
        lyrics=rq["lyrics"],
        user_metadata=rq["user_metadata"],
        target_duration_s=rq.get("target_duration"),
        options=_options(case, legacy=legacy, **overrides),
        seeds=seeds if seeds is not None else row_seeds,
        trace=trace,
        cot_seed=cot_seed if legacy and seeds is None else None,
    )


def _recorded_calls(case: dict, tensors: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Per official ``_run_pt_single`` call: cond/uncond prompt ids, the new tokens, the record."""
    calls = []
    for i, record in enumerate(case["calls"]):
        out = tensors[f"call{i}/output_ids"]
        if f"call{i}/batch_input_ids" in tensors:
            ids, mask = tensors[f"call{i}/batch_input_ids"], tensors[f"call{i}/batch_attention_mask"]
            cond, uncond = ids[0][mask[0] == 1].tolist(), ids[1][mask[1] == 1].tolist()
        else:
            ids, cond, uncond = tensors[f"call{i}/input_ids"], tensors[f"call{i}/input_ids"][0].tolist(), None
        calls.append(
            {"cond": cond, "uncond": uncond, "new": out[0, ids.shape[1] :].tolist(), "record": record}
        )
    return calls


def _results(case: dict, tensors: dict[str, torch.Tensor]) -> tuple[list[dict], list[list[int]]]:
    metadata = case["result_metadata"]
    metadata = metadata if isinstance(metadata, list) else [metadata]
    keys = sorted(k for k in tensors if k.startswith("result/audio_codes"))
    return metadata, [tensors[k].tolist() for k in keys]


FORBIDDEN_BELOW = -1e38
"""The fixtures store the top-16 scores with ``-inf`` clamped to -3e38: anything below this is forbidden."""


def _assert_scores(ours: torch.Tensor, top_values: torch.Tensor, name: str) -> None:
    """Our score rows ``[R, V]`` against the recorded top-16 values ``[R, 16]`` (forbidden: ``-inf``, or
    clamped to -3e38 in the fixtures)."""
    mine = torch.topk(ours.float(), top_values.shape[-1], dim=-1).values
    allowed = torch.isfinite(top_values) & (top_values > FORBIDDEN_BELOW)
    assert torch.equal(torch.isfinite(mine), allowed), f"{name}: forbidden sets differ"
    assert_close(mine[allowed], top_values[allowed], rtol=1e-4, name=name)


def _assert_full(ours: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    assert torch.equal(torch.isfinite(ours), torch.isfinite(expected)), f"{name}: forbidden sets differ"
    finite = torch.isfinite(expected)
    assert_close(ours[finite], expected[finite], rtol=1e-4, name=name)


def _assert_steps(call, tensors: dict[str, torch.Tensor], index: int) -> None:
    """Every recorded step of call ``index``: token, allowed count and set, top-16 final and raw scores;
    full vectors for the first steps."""
    prefix = f"call{index}"
    steps = call.steps.steps
    assert len(steps) == tensors[f"{prefix}/steps/token"].shape[0], f"{prefix}: step count"
    for s, step in enumerate(steps):
        name = f"{prefix} step {s}"
        assert step.tokens == tensors[f"{prefix}/steps/token"][s].tolist(), f"{name}: token"
        allowed = torch.isfinite(step.final)
        assert allowed.sum(-1).tolist() == tensors[f"{prefix}/steps/allowed_count"][s].tolist(), name
        packed = np.packbits(allowed.numpy(), axis=-1)
        assert np.array_equal(packed, tensors[f"{prefix}/steps/allowed_mask_packbits"][s].numpy()), name
        _assert_scores(step.final, tensors[f"{prefix}/steps/final_top_values"][s], f"{name} final")
        _assert_scores(step.raw, tensors[f"{prefix}/steps/raw_top_values"][s], f"{name} raw")
    for s in range(tensors[f"{prefix}/first_steps/raw_logits"].shape[0]):
        _assert_full(steps[s].raw, tensors[f"{prefix}/first_steps/raw_logits"][s], f"{prefix} first {s} raw")
        _assert_full(steps[s].final, tensors[f"{prefix}/first_steps/final_logits"][s], f"{prefix} first {s}")


# ------------------------------------------------------------------------------------------ prompts


def test_v15_planner_golden_prompts(lm, cases) -> None:
    """Every recorded prompt string and its token ids (the folder's tokenizer, no padding)."""
    render = lp.chat_renderer(lm.tokenizer)
    for name, (case, tensors) in cases.items():
        rq, recorded = case["request"], case["prompts"]
        negative = re.search(r"# Caption\n(.*)\n\n# Lyric", recorded["cot_uncond_negative"], re.S)
        assert negative is not None, name
        built = {
            "cot": lp.cot_prompt(render, rq["caption"], rq["lyrics"]),
            "cot_uncond_default": lp.cot_uncond_prompt(render, rq["lyrics"]),
            "cot_uncond_negative": lp.cot_uncond_prompt(render, rq["lyrics"], negative.group(1)),
            "codes": lp.codes_prompt(render, rq["caption"], rq["lyrics"], case["cot_text_for_codes_phase"]),
            "codes_uncond": lp.codes_uncond_prompt(
                render, rq["caption"], rq["lyrics"], rq.get("negative_prompt", lp.NO_USER_INPUT)
            ),
        }
        assert set(recorded) <= set(built), f"{name}: unknown prompts {set(recorded) - set(built)}"
        for key, text in recorded.items():
            assert built[key] == text, f"{name}/{key}: prompt text"
            ids = lm.tokenizer(built[key], padding=False)["input_ids"]
            assert ids == tensors[f"prompts/{key}/input_ids"][0].tolist(), f"{name}/{key}: token ids"


def test_v15_planner_golden_cot_text(cases) -> None:
    """The phase-2 CoT block is ``format_cot`` of the metadata the official run returned."""
    for name, (case, tensors) in cases.items():
        metadata, _ = _results(case, tensors)
        assert format_cot(metadata[0]) == case["cot_text_for_codes_phase"], name


# ------------------------------------------------------------------------------------------ legacy replay


def test_v15_planner_golden_replay(lm, cases) -> None:
    """Whole ``plan_song(legacy_planner=True)`` runs, greedy and sampled alike replayed exactly: per call
    the prompt ids (CFG twin included), token budget, tokens and output text; then the metadata and the
    audio codes of every row."""
    for name, (case, tensors) in cases.items():
        trace = PlannerTrace()
        plans = _plan(lm, case, trace=trace)
        recorded = _recorded_calls(case, tensors)
        assert [c.phase for c in trace.calls] == [r["record"]["generation_phase"] for r in recorded], name
        for i, (ours, rec) in enumerate(zip(trace.calls, recorded, strict=True)):
            where = f"{name} call{i}"
            assert ours.prompts[0] == rec["cond"], f"{where}: prompt ids"
            assert (ours.uncond_prompts[0] if ours.uncond_prompts else None) == rec["uncond"], (
                f"{where}: twin"
            )
            assert ours.settings.max_new_tokens == rec["record"]["max_new_tokens"], f"{where}: budget"
            assert ours.outputs[0] == rec["new"], f"{where}: tokens"
            assert ours.texts[0] == rec["record"]["output_text"], f"{where}: output text"
        metadata, codes = _results(case, tensors)
        assert [p.metadata() for p in plans] == metadata, f"{name}: metadata"
        assert [list(p.audio_codes or ()) for p in plans] == codes, f"{name}: audio codes"
        assert all(p.cot_text == case["cot_text_for_codes_phase"] for p in plans), name


def test_v15_planner_golden_steps_teacher_forced(lm, cases) -> None:
    """Teacher-forced on the recorded tokens: at every step the same allowed set (count and bits), the
    same top-16 final scores (after CFG, grammar, top-k/top-p) and raw logits, and the full vectors of
    the first steps."""
    for name, (case, tensors) in cases.items():
        recorded = _recorded_calls(case, tensors)
        trace = PlannerTrace(record_steps=True, force=[[r["new"]] for r in recorded])
        _plan(lm, case, trace=trace)
        assert len(trace.calls) == len(recorded), name
        for i, call in enumerate(trace.calls):
            _assert_steps(call, tensors, i)


# ------------------------------------------------------------------------------------------ fixed flow


def test_v15_planner_golden_fixed_keeps_user_fields(lm, cases) -> None:
    """Default flow: every user field is in every plan (legacy lost some: SPEC §9.9), the code count is
    ``5 * target``, the CoT's duration is the target, and no caption holds special-token text."""
    lost_somewhere = False
    for name, (case, tensors) in cases.items():
        rq = case["request"]
        user = check_user_metadata(rq["user_metadata"], max_duration_s=600)
        legacy_metadata, _ = _results(case, tensors)
        lost_somewhere |= any(k not in m for m in legacy_metadata for k in user)
        for plan in _plan(lm, case, legacy=False):
            metadata = plan.metadata()
            assert {k: metadata.get(k) for k in user} == user, f"{name}: user fields"
            assert len(plan.audio_codes or ()) == int(5 * rq["target_duration"]), name
            assert metadata.get("duration") == int(rq["target_duration"]) or "duration" in user, name
            assert "<|" not in (plan.caption or "") and "think>" not in (plan.caption or ""), name
    assert lost_somewhere, "no fixture shows the legacy loss of user fields (SPEC §9.9)"


def test_v15_planner_golden_fixed_skips_cot_with_all_metas(lm, cases) -> None:
    """With bpm, keyscale, timesignature and duration given, only the codes phase runs."""
    checked = 0
    for name, (case, _) in cases.items():
        user = check_user_metadata(case["request"]["user_metadata"], max_duration_s=600)
        if not has_all_metas(user):
            continue
        trace = PlannerTrace()
        plans = _plan(lm, case, legacy=False, trace=trace)
        assert [c.phase for c in trace.calls] == ["codes"] * len(plans), name
        assert all(p.raw_text == "" and {k: p.metadata()[k] for k in user} == user for p in plans), name
        checked += 1
    assert checked, "no fixture gives all four metas"


def test_v15_planner_golden_fixed_metadata_only(lm, cases) -> None:
    """``with_codes=False`` runs phase 1 only; without any duration the codes phase is refused."""
    for name, (case, _) in cases.items():
        user = check_user_metadata(case["request"]["user_metadata"], max_duration_s=600)
        if has_all_metas(user):
            continue
        trace = PlannerTrace()
        rq = case["request"]
        plans = plan_song(
            lm, caption=rq["caption"], lyrics=rq["lyrics"], user_metadata=rq["user_metadata"],
            target_duration_s=rq["target_duration"], options=_options(case, legacy=False), seeds=[3],
            with_codes=False, trace=trace,
        )  # fmt: skip
        assert [c.phase for c in trace.calls] == ["cot"] and plans[0].audio_codes is None, name
        assert plans[0].raw_text == trace.calls[0].texts[0], name
        with pytest.raises(ConfigError, match="need a song duration"):
            plan_song(
                lm, caption=rq["caption"], lyrics=rq["lyrics"], user_metadata=None, target_duration_s=None,
                options=_options(case, legacy=False, use_cot_metas=False), seeds=[3],
            )  # fmt: skip
        return
    pytest.fail("no fixture leaves metadata to plan")


def test_v15_planner_golden_fixed_batch_equals_singles(lm, cases) -> None:
    """A batch of seeds gives the plans of the singles (default flow: each row its own generator)."""
    batch_cases = [(n, c) for n, (c, _) in cases.items() if c["request"].get("seeds")]
    assert batch_cases, "no batch fixture"
    for name, case in batch_cases:
        seeds, _ = _seeds(case)
        together = _plan(lm, case, legacy=False, seeds=seeds)
        alone = [_plan(lm, case, legacy=False, seeds=[s])[0] for s in seeds]
        assert [p.to_dict() for p in together] == [p.to_dict() for p in alone], name
        assert len({p.audio_codes for p in together}) == len(seeds), f"{name}: seeds gave the same codes"


# ------------------------------------------------------------------------------------------ other uses


def _check_plan_values(plan: SongPlan, max_duration_s: int) -> None:
    if plan.bpm is not None:
        assert 30 <= plan.bpm <= 300
    if plan.duration_s is not None:
        assert 10 <= plan.duration_s <= max_duration_s
    assert plan.timesignature in (None, "2", "3", "4", "6")
    check_user_metadata({k: v for k, v in plan.metadata().items() if k != "caption"}, max_duration_s=600)


def test_v15_planner_golden_uses(lm, cases) -> None:
    """Simple mode, format and understand run on the fixture LM (greedy): their prompts are the builders',
    the grammar keeps the metadata valid, the user's fields win, understand keeps the given codes."""
    case, tensors = next(iter(cases.values()))
    _, codes = _results(case, tensors)
    options = PlannerOptions(temperature=0.0, max_duration_s=240)
    render = lp.chat_renderer(lm.tokenizer)
    trace = PlannerTrace()
    plan = describe_song(
        lm, "a calm song", instrumental=True, vocal_language="en", options=options, seed=1, trace=trace
    )
    assert (
        trace.calls[0].prompts[0]
        == lm.tokenizer(lp.inspiration_prompt(render, "a calm song", True))["input_ids"]
    )
    assert plan.language == "en" and plan.lyrics
    _check_plan_values(plan, 240)
    plan = format_song(lm, caption="pop", lyrics="", user_metadata={"bpm": 99}, options=options, seed=1)
    assert plan.bpm == 99 and plan.lyrics
    _check_plan_values(plan, 240)
    plan = understand_codes(lm, codes[0], options=options, seed=1)
    assert list(plan.audio_codes or ()) == codes[0]
    _check_plan_values(plan, 240)


# ------------------------------------------------------------------------------------------ inputs


@pytest.mark.parametrize(
    ("metadata", "target", "message"),
    [
        ({"duration": 5}, None, "duration 5 s is outside 10..600"),
        ({"bpm": 1000}, None, "bpm 1000 is outside 30..300"),
        ({"keyscale": "H major"}, None, "keyscale 'H major' is not known"),
        ({"timesignature": "5"}, None, "timesignature '5' is not known"),
        ({"language": "xx"}, None, "language 'xx' is not known"),
        ({"tempo": 120}, None, "unknown metadata fields"),
        ({"bpm": "fast"}, None, "bpm must be a number"),
        ({"bpm": float("nan")}, None, "finite"),
        ({}, 5.0, "target duration 5.0 s is outside"),
        ({}, 601.0, "outside"),
    ],
)
def test_v15_planner_inputs_refused(metadata: dict, target: float | None, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan_song(
            None, caption="c", lyrics="l", user_metadata=metadata, target_duration_s=target,
            options=PlannerOptions(), seeds=[1],
        )  # fmt: skip


def test_v15_planner_inputs_limits() -> None:
    opts = PlannerOptions()
    with pytest.raises(ConfigError, match="description has 100000 characters"):
        describe_song(None, "x" * 100_000, instrumental=False, vocal_language=None, options=opts, seed=1)
    with pytest.raises(ConfigError, match="caption has"):
        plan_song(
            None,
            caption="x" * 5000,
            lyrics="",
            user_metadata=None,
            target_duration_s=None,
            options=opts,
            seeds=[1],
        )
    with pytest.raises(ConfigError, match="at least one seed"):
        plan_song(
            None, caption="c", lyrics="", user_metadata=None, target_duration_s=None, options=opts, seeds=[]
        )
    with pytest.raises(ConfigError, match="seed -1"):
        plan_song(
            None, caption="c", lyrics="", user_metadata=None, target_duration_s=None, options=opts, seeds=[-1]
        )
    with pytest.raises(ConfigError, match="needs audio codes"):
        understand_codes(None, [], options=opts, seed=1)
    with pytest.raises(ConfigError, match="within 0..63999"):
        understand_codes(None, [64000], options=opts, seed=1)
    with pytest.raises(ConfigError, match="max_duration_s"):
        PlannerOptions(max_duration_s=5)
    with pytest.raises(ConfigError, match="temperature"):
        PlannerOptions(temperature=-1.0)
    with pytest.raises(ConfigError, match="constrained"):
        PlannerOptions(constrained=False)


def test_v15_planner_inputs_normalised() -> None:
    given = {
        "bpm": 120.0,
        "duration": "30",
        "keyscale": " F# minor",
        "timesignature": "4/4",
        "language": "en",
    }
    assert check_user_metadata(given) == {
        "bpm": 120, "duration": 30, "keyscale": "F# minor", "timesignature": "4", "language": "en",
    }  # fmt: skip
    assert check_user_metadata({"bpm": None, "keyscale": "N/A", "timesignature": 6}) == {"timesignature": "6"}
    assert has_all_metas({"bpm": 1, "keyscale": "C major", "timesignature": "4", "duration": 10})
    assert not has_all_metas({"bpm": 1, "keyscale": "C major", "timesignature": "4"})


# ------------------------------------------------------------------------------------------ plan and text


_text = st.one_of(st.none(), st.text(max_size=40))
_plans = st.builds(
    SongPlan,
    bpm=st.one_of(st.none(), st.integers(30, 300)),
    keyscale=_text,
    timesignature=st.one_of(st.none(), st.sampled_from(["2", "3", "4", "6"])),
    duration_s=st.one_of(st.none(), st.floats(10, 600, allow_nan=False)),
    language=_text,
    caption=_text,
    lyrics=_text,
    audio_codes=st.one_of(st.none(), st.lists(st.integers(0, 63999), max_size=20).map(tuple)),
    seed=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    raw_text=st.text(max_size=40),
    cot_text=st.text(max_size=40),
)


@settings(max_examples=50, deadline=None)
@given(_plans)
def test_v15_planner_song_plan_round_trip(plan: SongPlan) -> None:
    import json

    data = json.loads(json.dumps(plan.to_dict()))
    assert SongPlan.from_dict(data) == plan


def test_v15_planner_song_plan_refuses_bad_dicts() -> None:
    with pytest.raises(ConfigError, match="unknown song plan fields"):
        SongPlan.from_dict({"tempo": 1})
    with pytest.raises(ConfigError, match="audio_codes"):
        SongPlan.from_dict({"audio_codes": [1, "x"]})
    with pytest.raises(ConfigError, match="bpm"):
        SongPlan.from_dict({"bpm": "fast"})
    assert SongPlan(duration_s=10.0).metadata() == {"duration": 10}
    assert math.isclose(SongPlan(duration_s=10.5).metadata()["duration"], 10.5)


def test_v15_planner_dit_language() -> None:
    plan = SongPlan(language="zh")
    assert plan.dit_language("unknown", use_cot_language=True) == "zh"
    assert plan.dit_language("en", use_cot_language=True) == "en"
    assert plan.dit_language("unknown", use_cot_language=False) == "unknown"
    assert plan.dit_language("unknown", use_cot_language=True, legacy=True) == "unknown"


def test_v15_planner_extract_lyrics() -> None:
    assert (
        lp.extract_lyrics("<think>\nbpm: 90\n</think>\n\n# Lyric\n[verse]\nhi\n<|im_end|>") == "[verse]\nhi"
    )
    # the official header pattern ``Lyri[c|cs]?`` is a character class: "# Lyrics" stays (as upstream)
    assert lp.extract_lyrics("<think>\nbpm: 90\n</think>\n\n# Lyrics\nhi") == "# Lyrics\nhi"
    assert lp.extract_lyrics("<think>\nbpm: 90\n<|im_end|>") == ""
    assert lp.extract_lyrics("</think>   ") == ""
    assert lp.extract_lyrics("</think>\nla<|endoftext|>") == "la<|endoftext|>"
    assert lp.extract_lyrics("</think>\nla<|endoftext|>", ("<|im_end|>", "<|endoftext|>")) == "la"


def test_v15_planner_prompt_shapes() -> None:
    """The user turns of the uses (a plain renderer: role, content, generation flag)."""

    def render(messages, add_generation_prompt: bool) -> str:
        return "|".join(f"{m['role']}={m['content']}" for m in messages) + (
            "|gen" if add_generation_prompt else ""
        )

    system = f"system=# Instruction\n{lp.DEFAULT_LM_INSTRUCTION}\n\n"
    assert lp.cot_prompt(render, "c", "l") == f"{system}|user=# Caption\nc\n\n# Lyric\nl\n|gen"
    assert lp.cot_uncond_prompt(render, "l", " NO USER INPUT ") == f"{system}|user=# Lyric\nl\n|gen"
    assert lp.codes_prompt(render, "c", "l", "<think>\nx\n</think>").endswith(
        "assistant=<think>\nx\n</think>\n"
    )
    assert "user=# Caption\nneg\n" in lp.codes_uncond_prompt(render, "c", "l", "neg")
    assert lp.codes_uncond_prompt(render, "c", "l").endswith(f"assistant={lp.EMPTY_COT}\n")
    assert lp.inspiration_prompt(render, "d", False).endswith("user=d\n\ninstrumental: false|gen")
    assert lp.format_prompt(render, "c", "l").endswith("user=# Caption\nc\n\n# Lyric\nl|gen")
    assert lp.understand_prompt(render, "<|audio_code_1|>").startswith(
        f"system=# Instruction\n{lp.LM_UNDERSTAND_INSTRUCTION}\n\n|user=<|audio_code_1|>"
    )
