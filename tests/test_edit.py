"""FlowEdit (tasks/edit.py): golden parity in reference mode and invariants of the corrected mode.

Parity: the stored encoder inputs and noise draws of golden/pipeline/edit_* are injected; the
[condition; null] encodings, every guided model call and the final latents are compared.
Invariants (fake models, no weights): identical source and target conditions edit nothing under every
sampler, a real edit moves the latents under every sampler (the official ping-pong edit does not),
n_avg averages the draws, a batch equals its singles, bad ranges raise ConfigError.
"""

from __future__ import annotations

import pytest
import torch

from conftest import assert_close, golden_text_inputs, load_golden_run
from songflow.errors import ConfigError
from songflow.models.acestep_v1.transformer import Conditions
from songflow.requests import GenerationParams
from songflow.sampling.noise import make_generators, randn_per_sample
from songflow.tasks.edit import EDIT_PRESETS, encode_edit_conditions, run_edit
from songflow.tasks.plan import ConditionSet, TextInputs
from songflow.tasks.setup import TaskContext

EDIT_RUNS = ["edit_only_lyrics", "edit_remix", "edit_only_lyrics_pingpong"]
LATENT_RTOL = 1e-4
SAMPLERS = ["euler", "heun", "pingpong"]
ERRORS: dict[str, float] = {}


# ----------------------------------------------------------------------------------------------------
# golden parity (reference behaviour)


def _golden_edit(golden_transformer, params: dict, t: dict, *, reference: bool, on_eval=None) -> torch.Tensor:
    """Run one golden edit with its stored noise (``noise_draws`` order) injected."""
    o = params["official_input_params"]
    gen = GenerationParams(
        steps=o["infer_step"],
        sampler=o["scheduler_type"],
        guidance=o["cfg_type"],
        guidance_scale=o["guidance_scale"],
        guidance_interval=o["guidance_interval"],
    )
    draws = iter([t[d["tensor"]] for d in params["noise_draws"]])
    with torch.inference_mode():
        source, target = encode_edit_conditions(
            golden_transformer, golden_text_inputs(t), golden_text_inputs(t, "target_")
        )
        return run_edit(
            TaskContext(golden_transformer, source, gen),
            target,
            src_latents=t["inputs/src_latents"],
            n_min_frac=o["edit_n_min"],
            n_max_frac=o["edit_n_max"],
            n_avg=o["edit_n_avg"],
            noise_fn=lambda: next(draws),
            # the official discarded ping-pong draws are not stored; they never reach the result
            step_noise=lambda i: torch.zeros_like(t["inputs/src_latents"]),
            reference_behaviour=reference,
            on_eval=on_eval,
        )


def test_edit_conditions_match_reference(golden_dir, golden_transformer):
    params, t = load_golden_run(golden_dir, "edit_remix")
    with torch.inference_mode():
        source, target = encode_edit_conditions(
            golden_transformer, golden_text_inputs(t), golden_text_inputs(t, "target_")
        )
    for label, conds in (("edit_0", source), ("edit_1", target)):
        states = torch.cat([conds.cond.states, conds.uncond.states])
        ERRORS[f"encoder {label}"] = assert_close(
            states, t[f"encoder/{label}/hidden_states"], name=f"encoder {label}"
        )
        mask = torch.cat([conds.cond.mask, conds.uncond.mask])
        assert torch.equal(mask, t[f"encoder/{label}/mask"])
        assert conds.uncond_query_scale is None and conds.text_only is None


@pytest.mark.parametrize("name", EDIT_RUNS)
def test_edit_run_matches_reference(golden_dir, golden_transformer, name):
    params, t = load_golden_run(golden_dir, name)
    calls: list[tuple[str, torch.Tensor]] = []
    final = _golden_edit(
        golden_transformer, params, t, reference=True, on_eval=lambda b, v: calls.append((b, v))
    )
    ref_calls = sorted(k for k in t if k.startswith("edit_calls/"))
    assert len(calls) == len(ref_calls) == len(params["steps"])
    for (branch, v), key, step in zip(calls, ref_calls, params["steps"], strict=True):
        assert (branch == "source") == (step["momentum_buffer"] == "shared_src_buffer")
        err = assert_close(v, t[key], rtol=LATENT_RTOL, name=f"{name} {key}")
        ERRORS[f"{name} calls"] = max(ERRORS.get(f"{name} calls", 0.0), err)
    ERRORS[f"{name} final"] = assert_close(final, t["final_latents"], rtol=LATENT_RTOL, name=f"{name} final")
    if name.endswith("pingpong"):  # official bug: the ping-pong edit update is discarded
        assert torch.equal(final, t["inputs/src_latents"])


def test_corrected_edit_differs_from_reference(golden_dir, golden_transformer):
    """Default mode: ping-pong really edits; symmetric APG momentum changes the euler result."""
    params, t = load_golden_run(golden_dir, "edit_only_lyrics_pingpong")
    moved = _golden_edit(golden_transformer, params, t, reference=False)
    assert (moved - t["inputs/src_latents"]).abs().max() > 1e-2
    params, t = load_golden_run(golden_dir, "edit_only_lyrics")
    symmetric = _golden_edit(golden_transformer, params, t, reference=False)
    assert (symmetric - t["final_latents"]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------
# invariants with fake models

SHAPE = (8, 16, 5)


class FieldModel:
    """Per-row velocity ``tanh(x) * (1 + c) + c * sigma`` (``linear``: ``x * (1 + c) + c``), ``c`` the
    masked mean of the condition states; counts calls."""

    def __init__(self, linear: bool = False):
        self.linear = linear
        self.calls = 0

    def __call__(self, x, sigma, cond, *, query_scale=None):
        self.calls += 1
        m = cond.mask
        c = ((cond.states.mean(-1) * m).sum(1) / m.sum(1).clamp_min(1)).view(-1, 1, 1, 1)
        if self.linear:
            return x * (1 + c) + c
        return torch.tanh(x) * (1 + c) + c * sigma.view(-1, 1, 1, 1)


def _conds(values: list[float], null: float = -0.3) -> ConditionSet:
    """One row per value: cond states filled with it; the null has a half-zero mask."""
    b = len(values)
    states = torch.tensor(values).view(b, 1, 1).expand(b, 4, 3).clone()
    states[:, 1] *= 0.5
    null_mask = torch.tensor([1.0, 1.0, 0.0, 0.0]).expand(b, 4)
    return ConditionSet(
        cond=Conditions(states=states, mask=torch.ones(b, 4)),
        uncond=Conditions(states=torch.full((b, 4, 3), null), mask=null_mask.clone()),
    )


def _edit(
    source: ConditionSet,
    target: ConditionSet,
    *,
    model=None,
    seeds=(11,),
    frac=(0.0, 1.0),
    n_avg: int = 1,
    reference: bool = False,
    **params,
) -> torch.Tensor:
    gens = make_generators(list(seeds))
    src = torch.randn((1, *SHAPE), generator=torch.Generator().manual_seed(5))
    p = GenerationParams(**{"steps": 6, "guidance_interval": 1.0, **params})
    return run_edit(
        TaskContext(model or FieldModel(), source, p),
        target,
        src_latents=src,
        n_min_frac=frac[0],
        n_max_frac=frac[1],
        n_avg=n_avg,
        noise_fn=lambda: randn_per_sample(SHAPE, gens),
        reference_behaviour=reference,
    )


def _source() -> torch.Tensor:
    return torch.randn((1, *SHAPE), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("guidance", ["apg", "cfg", "cfg_star"])
@pytest.mark.parametrize(("n_min", "n_avg"), [(0.0, 1), (0.0, 3), (0.5, 2)])
def test_identical_conditions_return_the_source_exactly(sampler, guidance, n_min, n_avg):
    conds = _conds([0.4])
    out = _edit(conds, conds, frac=(n_min, 1.0), n_avg=n_avg, sampler=sampler, guidance=guidance)
    assert torch.equal(out, _source())


def test_reference_momentum_is_asymmetric():
    """Official: the source branch has APG momentum, the target none, so identical prompts still edit."""
    conds = _conds([0.4])
    out = _edit(conds, conds, reference=True)
    assert (out - _source()).abs().max() > 1e-3


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("frac", [EDIT_PRESETS["only_lyrics"], EDIT_PRESETS["remix"], (0.0, 1.0)])
def test_an_edit_moves_the_latents_under_every_sampler(sampler, frac):
    out = _edit(_conds([0.4]), _conds([1.2]), frac=frac, sampler=sampler)
    assert (out - _source()).abs().max() > 1e-2
    # the reference discards the ping-pong edit (docs/reference_behaviour.md#r17); euler edits
    if frac[1] == 1.0:
        ref = _edit(_conds([0.4]), _conds([1.2]), frac=frac, sampler=sampler, reference=True)
        if sampler == "pingpong":
            assert torch.equal(ref, _source())
        else:
            assert (ref - _source()).abs().max() > 1e-2


def test_n_avg_averages_the_draws():
    """For a field linear in x (and CFG), averaging the dV of draws e1, e2 equals one draw (e1 + e2) / 2."""
    source, target = _conds([0.4]), _conds([1.2])
    src = _source()
    gens = make_generators([3])
    draws = [randn_per_sample(SHAPE, gens) for _ in range(6)]
    p = GenerationParams(steps=3, guidance="cfg", guidance_scale=4.0, guidance_interval=1.0)

    def run(noise, n_avg):
        it = iter(noise)
        model = FieldModel(linear=True)
        out = run_edit(
            TaskContext(model, source, p),
            target,
            src_latents=src,
            n_min_frac=0.0,
            n_max_frac=1.0,
            n_avg=n_avg,
            noise_fn=lambda: next(it),
        )
        assert next(it, None) is None  # n_avg draws per edit step, nothing more
        return out, model.calls

    averaged, calls = run(draws, 2)
    assert calls == 3 * 2 * 2  # steps x draws x (source, target)
    mean_draws = [(draws[2 * k] + draws[2 * k + 1]) / 2 for k in range(3)]
    single, _ = run(mean_draws, 1)
    assert_close(averaged, single, rtol=1e-5, name="n_avg mean")
    assert (averaged - src).abs().max() > 1e-2


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("guidance", ["apg", "cfg_star"])
def test_batch_equals_singles(sampler, guidance):
    kw = dict(frac=EDIT_PRESETS["remix"], n_avg=2, sampler=sampler, guidance=guidance)
    batch = _edit(_conds([0.4, -0.2]), _conds([1.2, 0.9]), seeds=(11, 12), **kw)
    for b, (s, t, seed) in enumerate([(0.4, 1.2, 11), (-0.2, 0.9, 12)]):
        single = _edit(_conds([s]), _conds([t]), seeds=(seed,), **kw)
        assert_close(batch[b : b + 1], single, rtol=1e-6, name=f"{sampler} {guidance} item {b}")


def test_callback_and_noise_draws_follow_the_schedule():
    gens = make_generators([1])
    n_draws = 0

    def noise():
        nonlocal n_draws
        n_draws += 1
        return randn_per_sample(SHAPE, gens)

    steps: list[int] = []
    run_edit(
        TaskContext(FieldModel(), _conds([0.4]), GenerationParams(steps=10, sampler="pingpong")),
        _conds([1.2]),
        src_latents=_source(),
        n_min_frac=0.2,
        n_max_frac=0.4,
        n_avg=3,
        noise_fn=noise,
        callback=lambda i, sigma, x: steps.append(i),
    )
    assert steps == list(range(2, 10))
    assert n_draws == 2 * 3 + 1 + 6  # edit draws, phase-2 start, ping-pong step noise (default noise_fn)


def test_null_condition_zeroes_text_speaker_ids_and_lyric_mask():
    class EncodeModel:
        def __init__(self):
            self.encodes = []

        def encode(self, text, text_mask, speaker, ids, lyric_mask, *, lyric_query_scale=None):
            self.encodes.append((text, text_mask, speaker, ids, lyric_mask, lyric_query_scale))
            return Conditions(states=text[:, :1].expand(-1, 2, -1), mask=torch.ones(text.shape[0], 2))

    inputs = TextInputs(
        text_states=torch.randn(2, 3, 6),
        text_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]),
        speaker_embeds=torch.randn(2, 4),
        lyric_ids=torch.tensor([[261, 5, 0], [261, 7, 9]]),
        lyric_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]),
        text_states_erg=torch.randn(2, 3, 6),
    )
    model = EncodeModel()
    source, target = encode_edit_conditions(model, inputs, inputs)
    assert len(model.encodes) == 4
    cond, null = model.encodes[0], model.encodes[1]
    assert cond[0] is inputs.text_states and cond[3] is inputs.lyric_ids and cond[4] is inputs.lyric_mask
    text, text_mask, speaker, ids, lyric_mask, scale = null
    assert torch.equal(text, torch.zeros_like(inputs.text_states)) and text_mask is inputs.text_mask
    assert not speaker.any() and not ids.any() and not lyric_mask.any() and scale is None
    assert source.uncond_query_scale is None and target.text_only is None


@pytest.mark.parametrize(
    ("frac", "n_avg", "message"),
    [
        ((0.6, 0.6), 1, "smaller than"),
        ((0.8, 0.2), 1, "smaller than"),
        ((-0.1, 0.5), 1, r"in \[0, 1\]"),
        ((0.2, 1.5), 1, r"in \[0, 1\]"),
        ((0.2, float("nan")), 1, "number"),
        ((0.2, 0.4), 0, "n_avg"),
        ((0.2, 0.4), 1.5, "n_avg"),
        ((0.2, 0.4), True, "n_avg"),
        ((0.5, 0.55), 1, "holds no step"),
    ],
)
def test_bad_ranges_raise_config_error(frac, n_avg, message):
    with pytest.raises(ConfigError, match=message):
        _edit(_conds([0.4]), _conds([1.2]), frac=frac, n_avg=n_avg)


def test_double_condition_guidance_is_rejected():
    with pytest.raises(ConfigError, match="double-condition"):
        _edit(_conds([0.4]), _conds([1.2]), guidance_scale_text=5.0, guidance_scale_lyric=1.5)


@pytest.mark.parametrize("reference", [False, True])
def test_unknown_guidance_kind_raises_before_any_model_call(reference):
    """FlowEdit looks the kind up in the guidance registry (as ``build_velocity`` does) and never falls
    back to another kind. (The reference forces APG, but it rebuilds the params, which rejects the kind.)"""
    p = GenerationParams(steps=6, guidance_interval=1.0)
    object.__setattr__(p, "guidance", "cfg-zero")  # bypass the request validation
    model = FieldModel()
    message = "choose one of" if reference else "'cfg-zero'; valid: cfg, apg, cfg_star"
    with pytest.raises(ConfigError, match=message):
        run_edit(
            TaskContext(model, _conds([0.4]), p),
            _conds([1.2]),
            src_latents=_source(),
            n_min_frac=0.0,
            n_max_frac=1.0,
            n_avg=1,
            noise_fn=lambda: torch.zeros((1, *SHAPE)),
            reference_behaviour=reference,
        )
    assert model.calls == 0


def test_report_errors():
    """Print the max abs errors gathered above (run with -s to see them)."""
    for name, err in ERRORS.items():
        print(f"parity {name:40s} max abs err {err:.3e}")
