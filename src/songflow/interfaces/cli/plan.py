"""``songflow plan``, ``songflow format`` and ``songflow understand``: the ACE-Step 1.5 5 Hz LM planner
without the DiT.

- ``plan``: a song's blueprint (the metadata the LM fills in and, unless ``--no-codes``, its 5 Hz audio
  codes) from a caption, lyrics and the metadata given; ``--description`` plans from a free description
  instead (simple mode: the LM writes caption, lyrics and metadata).
- ``format``: the LM tidies a caption and lyrics (and fills the metadata).
- ``understand AUDIO``: the LM reads a song back (VAE -> 5 Hz codes -> caption, lyrics, metadata).

Flags come from the request dataclasses (``songflow.requests_v15``: ``Plan15``, ``Format15``,
``Understand15``, ``Simple15`` and the planner fields of ``Params15``), as ``songflow generate``'s do. The
answer is printed as readable text (``--json``: JSON); ``--out FILE`` writes the JSON (request + plans)
atomically. ``plan`` and ``format`` load only the LM; ``understand`` loads the whole checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
from pathlib import Path
from typing import Any

from songflow.errors import ConfigError
from songflow.interfaces.cli.generate import _merged_kind, _Owner, _read_lyrics, require_v15_checkpoint
from songflow.interfaces.cli.options import DTYPES, add_lm_flags

_ALIASES = {"duration_s": ["--duration"], "seeds": ["--seed", "--seeds"], "with_codes": ["--codes"]}
_PLANNER_PARAMS = ("seeds", "batch_size", "lm_seeds", "constrained_decoding", "legacy_planner")
_N_CODES_SHOWN = 12


def _planner_params() -> list[str]:
    """The ``Params15`` fields the planner uses (``lm_*``, ``use_cot_*``, seeds, batch size...)."""
    from songflow.requests_v15 import Params15

    names = [f.name for f in dataclasses.fields(Params15)]
    return [n for n in names if n.startswith(("lm_", "use_cot_")) or n in _PLANNER_PARAMS]


def _add_fields(group: Any, cls: type, names: Any) -> None:
    """One flag per field of ``cls`` named in ``names`` (default None: the dataclass default applies)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in names:
            continue
        flags = list(dict.fromkeys([f"--{f.name.replace('_', '-')}", *_ALIASES.get(f.name, [])]))
        text = f.metadata.get("help") or f.name.replace("_", " ")
        if f.default not in (None, (), "", dataclasses.MISSING):
            text += f" (default: {f.default})"
        kind = _merged_kind([_Owner(None, (), f, hints[f.name])])
        group.add_argument(*flags, dest=f.name, default=None, help=text, **kind)


def _given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)} - {"params"}
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _request(args: argparse.Namespace) -> Any:
    """The request the flags describe (``Plan15``/``Format15``/``Understand15``, or ``Simple15`` for
    ``plan --description``)."""
    from songflow.requests_v15 import V15_PLANNER_SCHEMA, V15_SCHEMA, Plan15, Simple15

    params = {n: getattr(args, n) for n in _planner_params() if getattr(args, n, None) is not None}
    if args.command == "plan" and args.description is not None:
        shared = ("duration_s", "vocal_language", "with_codes")
        text_flags = sorted(n for n in _given(args, Plan15) if n not in shared)
        if text_flags:
            flag = text_flags[0].replace("_", "-")
            raise ConfigError(f"--description plans from the description alone; leave out --{flag}")
        data = {"task": "simple", **_given(args, Simple15), "think": args.with_codes is not False}
        return V15_SCHEMA.from_dict({**data, "params": params})
    cls = V15_PLANNER_SCHEMA.tasks[args.command]
    data = {"task": args.command, **_given(args, cls), "params": params}
    if "lyrics" in data:
        data["lyrics"] = _read_lyrics(data["lyrics"])
    if args.command == "understand":
        data["source_path"] = args.audio
    return V15_PLANNER_SCHEMA.from_dict(data)


def _checkpoint_layout(args: argparse.Namespace) -> Any:
    """The validated 1.5 layout of ``--checkpoint`` (ConfigError for another family's folder)."""
    from songflow.checkpoint import acestep_v15 as ckpt

    return ckpt.validate_v15(require_v15_checkpoint(args.checkpoint, "the 5 Hz LM planner"), lm=args.lm)


def run_planner_command(args: argparse.Namespace) -> tuple[Any, list[Any], float, float]:
    """(request, plans, seconds, LM tokens per second) of ``plan``/``format``/``understand``."""
    from songflow.pipeline_v15 import load_v15_planner
    from songflow.requests import with_seeds
    from songflow.requests_v15 import Simple15
    from songflow.tasks.acestep_v15.planned import resolve_planner_seeds

    request = resolve_planner_seeds(with_seeds(_request(args)))
    layout = _checkpoint_layout(args)
    if args.command == "understand":
        from songflow.families import load_pipeline

        pipe = load_pipeline(
            args.checkpoint, device=args.device, dtype=args.dtype, offload=args.offload,
            lm=args.lm, lm_offload=args.lm_offload,
        )  # fmt: skip
        planner, run = pipe.planner, pipe.understand
    else:
        planner = load_v15_planner(layout, device=args.device, lm_offload=args.lm_offload)
        run = {"plan": planner.plan, "format": planner.format}[args.command]
        if isinstance(request, Simple15):
            run = planner.describe
    planner.lm().reset_counters()
    t0 = time.perf_counter()
    plans = run(request)
    return request, plans, time.perf_counter() - t0, planner.lm().tokens_per_s()


def plan_text(plans: list[Any], *, verbose: bool = False) -> str:
    """The plans as readable text: one YAML-like block per song (codes summarised)."""
    blocks = []
    for i, plan in enumerate(plans):
        lines = [f"# song {i + 1} of {len(plans)} (planner seed {plan.seed})"]
        for key, value in plan.metadata().items():
            lines.append(f"{key}: {value}")
        if plan.lyrics:
            lines.append("lyrics: |")
            lines += [f"  {line}" for line in plan.lyrics.splitlines()]
        if plan.audio_codes is not None:
            shown = " ".join(map(str, plan.audio_codes[:_N_CODES_SHOWN]))
            more = " ..." if len(plan.audio_codes) > _N_CODES_SHOWN else ""
            lines.append(f"audio_codes: {len(plan.audio_codes)} codes ({shown}{more})")
        if verbose and plan.raw_text:
            lines.append("raw: |")
            lines += [f"  {line}" for line in plan.raw_text.splitlines()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def plans_json(request: Any, plans: list[Any]) -> dict[str, Any]:
    """``{"request": ..., "plans": [...]}`` (JSON-ready)."""
    from songflow.requests_v15 import request15_to_dict

    return {"request": request15_to_dict(request), "plans": [p.to_dict() for p in plans]}


def cmd_plan(args: argparse.Namespace) -> int:
    from songflow.fileio import atomic_write_text

    if args.out is not None and Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a folder; give a file name such as plan.json")
    request, plans, seconds, tokens_per_s = run_planner_command(args)
    data = plans_json(request, plans)
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if args.out is not None:
        atomic_write_text(Path(args.out), text)
    if args.json:
        sys.stdout.write(text)
    else:
        sys.stdout.write(plan_text(plans, verbose=getattr(args, "verbose", False)))
    if not args.quiet:
        wrote = f"; wrote {args.out}" if args.out else ""
        print(
            f"{len(plans)} answer(s) in {seconds:.2f} s ({tokens_per_s:.0f} LM tokens/s){wrote}",
            file=sys.stderr,
        )
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    from songflow.requests_v15 import Params15

    lm = parser.add_argument_group("planner sampling and seeds")
    _add_fields(lm, Params15, _planner_params())
    out = parser.add_argument_group("output and runtime")
    out.add_argument("--out", default=None, help="also write the answer as JSON to this file")
    out.add_argument("--json", action="store_true", help="print JSON instead of text")
    out.add_argument("--quiet", action="store_true", help="print nothing on stderr but errors")
    out.add_argument("--checkpoint", help="an ACE-Step 1.5 checkpoints/ folder (with an acestep-5Hz-lm-*)")
    out.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    add_lm_flags(out)
    parser.set_defaults(func=cmd_plan)


def add_plan_parsers(subparsers: Any) -> None:
    """``plan``, ``format`` and ``understand``."""
    from songflow.requests_v15 import Format15, Plan15, Simple15

    plan = subparsers.add_parser(
        "plan", help="ACE-Step 1.5: plan a song with the 5 Hz LM (metadata + audio codes), no audio"
    )
    what = plan.add_argument_group("what to plan")
    _add_fields(what, Plan15, {f.name for f in dataclasses.fields(Plan15)} - {"params"})
    _add_fields(what, Simple15, ("description", "instrumental"))
    _add_common(plan)
    fmt = subparsers.add_parser("format", help="ACE-Step 1.5: tidy a caption and lyrics with the 5 Hz LM")
    _add_fields(fmt.add_argument_group("what to format"), Format15, _format_fields())
    _add_common(fmt)
    und = subparsers.add_parser(
        "understand", help="ACE-Step 1.5: read caption, lyrics and metadata back from a song (5 Hz LM)"
    )
    und.add_argument("audio", help="the audio file to read (any rate)")
    _add_common(und)
    und.add_argument(
        "--dtype", default="float32", choices=DTYPES, help="DiT/VAE precision (default: float32)"
    )
    und.add_argument("--offload", action="store_true", help="keep the models on the CPU between stages")


def _format_fields() -> set[str]:
    from songflow.requests_v15 import Format15

    return {f.name for f in dataclasses.fields(Format15)} - {"params"}
