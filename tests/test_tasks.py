"""Task-layer invariants with a fake model (no weights): guidance passes, ERG rows, the null condition."""

from __future__ import annotations

import pytest
import torch

from songflow.audio.geometry import OFFICIAL_GEOMETRY
from songflow.errors import ConfigError
from songflow.models.acestep_v1.transformer import Conditions
from songflow.requests import GenerationParams, Retake, Text2Music
from songflow.sampling.guidance import guidance_interval_bounds
from songflow.sampling.noise import make_generators, randn_per_sample, trig_mix
from songflow.tasks.plan import (
    ConditionSet,
    ErgFlags,
    TextInputs,
    build_velocity,
    encode_conditions,
    run_plan,
)
from songflow.tasks.registry import spec_for
from songflow.tasks.repaint import repaint_window
from songflow.tasks.retake import build_retake_plan
from songflow.tasks.setup import TaskContext
from songflow.tasks.text2music import build_text2music_plan


class FakeModel:
    """v = x * (1 + mean of the condition states); records every call."""

    def __init__(self):
        self.calls: list[dict] = []
        self.encodes: list[dict] = []

    def __call__(self, x, sigma, cond, *, query_scale=None):
        self.calls.append({"batch": x.shape[0], "query_scale": query_scale})
        return x * (1 + cond.states.mean(dim=(1, 2)).view(-1, 1, 1, 1))

    def encode(self, text, text_mask, speaker, ids, lyric_mask, *, lyric_query_scale=None):
        self.encodes.append({"text": text, "ids": ids, "lyric_mask": lyric_mask, "scale": lyric_query_scale})
        states = torch.cat([text.mean(-1, keepdim=True), ids.float().unsqueeze(-1)], dim=1).expand(-1, -1, 4)
        return Conditions(states=states, mask=torch.cat([text_mask, lyric_mask], dim=1).float())


def _conds(batch: int = 1) -> ConditionSet:
    s = lambda v: Conditions(states=torch.full((batch, 3, 4), v), mask=torch.ones(batch, 3))  # noqa: E731
    return ConditionSet(
        cond=s(0.5), uncond=s(-0.25), text_only=s(0.1), uncond_query_scale={15: 0.01, 16: 0.01}
    )


def _guided_evals(params: GenerationParams) -> list[int]:
    model = FakeModel()
    plan = build_text2music_plan(
        TaskContext(model, _conds(), params, [torch.Generator()]), torch.randn(1, 8, 16, 5)
    )
    run_plan(plan)
    return [k for k, call in enumerate(model.calls) if call["batch"] == 2]


def test_heun_interval_reference_vs_fixed():
    n = 8
    start, end = guidance_interval_bounds(n, 0.5)
    base = dict(steps=n, sampler="heun", guidance_interval=0.5)
    # reference: the interval [start, end) is counted over the 2N-1 evaluations
    assert _guided_evals(GenerationParams(**base, legacy_heun_interval=True)) == list(range(start, end))
    # fixed: both evaluations of every step inside the interval are guided
    fixed = _guided_evals(GenerationParams(**base, legacy_heun_interval=False))
    assert fixed == [k for k in range(2 * n - 1) if start <= k // 2 < end]


def test_batched_passes_weaken_only_the_unconditional_rows():
    model = FakeModel()
    velocity = build_velocity(model, _conds(batch=2), _spec())
    velocity(torch.randn(2, 8, 16, 5), torch.full((2,), 0.5), 0)
    (call,) = model.calls
    assert call["batch"] == 4
    rows = call["query_scale"][15].flatten().tolist()
    assert rows == pytest.approx([1.0, 1.0, 0.01, 0.01])


def test_batched_equals_separate_passes_and_double_condition():
    x, sigma = torch.randn(2, 8, 16, 5), torch.full((2,), 0.5)
    spec = _spec(scale_text=5.0, scale_lyric=1.5)
    batched = build_velocity(FakeModel(), _conds(2), spec)(x, sigma, 0)
    separate_model = FakeModel()
    separate = build_velocity(separate_model, _conds(2), spec, batch_passes=False)(x, sigma, 0)
    assert len(separate_model.calls) == 3
    torch.testing.assert_close(batched, separate)


def _spec(**kw):
    from songflow.tasks.plan import GuidanceSpec

    return GuidanceSpec(kind="cfg", scale=7.0, interval=1.0, n_steps=4, **kw)


def _inputs() -> TextInputs:
    return TextInputs(
        text_states=torch.randn(1, 3, 6),
        text_mask=torch.ones(1, 3, dtype=torch.long),
        speaker_embeds=torch.zeros(1, 4),
        lyric_ids=torch.tensor([[261, 259, 7]]),
        lyric_mask=torch.ones(1, 3, dtype=torch.long),
        text_states_erg=torch.randn(1, 3, 6),
    )


def test_null_condition_without_erg_lyric_zeroes_ids_and_keeps_the_mask():
    model = FakeModel()
    inputs = _inputs()
    conds = encode_conditions(
        model,
        inputs,
        erg=ErgFlags(True, False, False),
        need_uncond=True,
        need_text_only=False,
        n_lyric_blocks=6,
        n_dit_blocks=24,
    )
    null = model.encodes[1]
    # ERG-tag states unused (docs/reference_behaviour.md#r6)
    assert torch.equal(null["text"], torch.zeros_like(inputs.text_states))
    assert torch.equal(null["ids"], torch.zeros_like(inputs.lyric_ids))
    # lyric mask kept at 1 (docs/reference_behaviour.md#r7)
    assert torch.equal(null["lyric_mask"], inputs.lyric_mask)
    assert conds.uncond_query_scale is None


def test_null_condition_with_erg_uses_weakened_encoders_on_existing_layers():
    model = FakeModel()
    inputs = _inputs()
    conds = encode_conditions(
        model,
        inputs,
        erg=ErgFlags(True, True, True),
        need_uncond=True,
        need_text_only=True,
        n_lyric_blocks=5,
        n_dit_blocks=17,
    )
    null, text_only = model.encodes[1], model.encodes[2]
    assert torch.equal(null["text"], inputs.text_states_erg) and torch.equal(null["ids"], inputs.lyric_ids)
    assert null["scale"] == {4: 0.01} and text_only["scale"] == {4: 0.01}
    assert torch.equal(text_only["text"], inputs.text_states)
    assert conds.uncond_query_scale == {15: 0.01, 16: 0.01}


class FakeHost:
    """The ``TaskHost`` a runner sees: official geometry, seeded noise, no audio files."""

    geometry = OFFICIAL_GEOMETRY

    def noise(self, generators, n_frames):
        return randn_per_sample((8, 16, n_frames), generators)

    def load_source(self, path, *, what, allow_long=False):
        raise AssertionError("text tasks read no audio")

    def text_inputs(self, tags, lyrics, batch, *, with_erg_text):
        raise AssertionError("the conditions come with the context")


def test_runners_convert_seconds_and_match_their_plans():
    """text2music and retake runners: duration_s -> frames (truncated) and the plan built by hand."""
    params = GenerationParams(steps=3, seeds=(3,))
    host, steps = FakeHost(), []

    def ctx() -> TaskContext:
        return TaskContext(FakeModel(), _conds(), params, make_generators([3]), make_generators([4]))

    t2m = Text2Music(tags="pop", duration_s=1.0, params=params)
    got = spec_for("text2music").run(host, t2m, ctx(), lambda i, n: steps.append((i, n)))
    assert got.shape[-1] == OFFICIAL_GEOMETRY.frames_from_seconds(1.0) == 10
    assert steps == [(1, 3), (2, 3), (3, 3)]
    c = ctx()
    want = run_plan(build_text2music_plan(c, host.noise(c.generators, 10)))
    assert torch.equal(got, want)
    retake = Retake(tags="pop", duration_s=1.0, params=params, variance_frac=0.5, retake_seeds=(4,))
    got = spec_for("retake").run(host, retake, ctx(), None)
    c = ctx()
    noise, retake_noise = host.noise(c.generators, 10), host.noise(c.retake_generators, 10)
    want = run_plan(build_retake_plan(c, noise=noise, retake_noise=retake_noise, variance_frac=0.5))
    assert torch.equal(got, want)
    initial = spec_for("retake").initial_noise(host, retake, make_generators([3]), 10)
    assert torch.equal(initial, trig_mix(noise, retake_noise, 0.5))


def test_repaint_window_in_frames():
    g = OFFICIAL_GEOMETRY
    assert repaint_window(g, 1.0, 2.0, 100) == (g.frames_from_seconds(1.0), g.frames_from_seconds(2.0))
    assert repaint_window(g, 1.0, 60.0, 100) == (10, 100)  # clipped to the source
    with pytest.raises(ConfigError, match="after the source ends"):
        repaint_window(g, 20.0, 30.0, 100)
