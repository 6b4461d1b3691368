"""Checkpoint folders: ``songflow download``, ``songflow random-checkpoint`` and ``songflow info``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_CHECKPOINT_DIR = Path("~/.cache/songflow/checkpoints/ACE-Step-v1-3.5B").expanduser()
DEFAULT_V15_CHECKPOINT_DIR = Path("~/.cache/songflow/checkpoints/ACE-Step-1.5").expanduser()


def cmd_download(args: argparse.Namespace) -> int:
    from songflow.checkpoint.hub import download_checkpoint, download_v15, fetch_lyric_vocab

    if args.model is not None or args.lm is not None:  # ACE-Step 1.5, official checkpoints/ layout
        where = Path(args.dir or DEFAULT_V15_CHECKPOINT_DIR).expanduser()
        root = download_v15(args.model or "acestep-v15-turbo", where, lm=args.lm, revision=args.revision)
        print(f"ACE-Step 1.5 checkpoint ready in {root}", file=sys.stderr)
        return 0
    root = download_checkpoint(
        args.repo_id, Path(args.dir or DEFAULT_CHECKPOINT_DIR).expanduser(), revision=args.revision
    )
    fetch_lyric_vocab(root)
    print(f"checkpoint ready in {root}", file=sys.stderr)
    return 0


def cmd_random_checkpoint(args: argparse.Namespace) -> int:
    from songflow.checkpoint.random_checkpoint import build_random_checkpoint

    path = build_random_checkpoint(Path(args.dir), size=args.size, seed=args.seed)
    print(
        f"random-weight {args.size} checkpoint written to {path} (it makes noise, not music)", file=sys.stderr
    )
    return 0


def format_report(report) -> str:
    """The text ``songflow info`` prints for a :class:`songflow.families.FolderReport`."""
    from songflow.families import FAMILIES

    family = FAMILIES.get(report.family)
    title = f" ({family.title})" if family is not None else ""
    rows = [(c.name, c.folder, c.kind, _count(c.n_params), c.dtype or "?") for c in report.components]
    widths = [max([len(r[i]) for r in rows] + [0]) for i in range(5)]
    lines = [f"family: {report.family}{title}", f"root:   {report.root}"]
    if report.variant is not None:
        lines.append(f"variant: {report.variant}")
    lines.append("components:")
    for name, folder, kind, count, dtype in rows:
        lines.append(
            f"  {name:<{widths[0]}}  {folder:<{widths[1]}}  {kind:<{widths[2]}}  "
            f"{count:>{widths[3]}} params  {dtype}"
        )
    lines.append(f"total:  {_count(report.n_params)} params")
    return "\n".join(lines)


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def cmd_info(args: argparse.Namespace) -> int:
    from songflow.checkpoint.hub import resolve_checkpoint
    from songflow.families import describe_folder

    root = resolve_checkpoint(args.dir)
    print(format_report(describe_folder(root)))
    if getattr(args, "hashes", False):
        print(format_hashes(root))
    return 0


def format_hashes(root: Path) -> str:
    """The sha256 of each weight file of each component (LM included), as sidecars record them
    (``weights_sha256``; cached, so a checkpoint is read once)."""
    from songflow.interfaces.sidecar import checkpoint_weight_hashes, hash_cache_path

    hashes = checkpoint_weight_hashes(root, with_lm=True)
    lines = ["weight sha256:"]
    for component, files in hashes.items():
        for name, digest in files.items():
            lines.append(f"  {component}  {name}  {digest}")
    lines.append(f"(cached in {hash_cache_path()})")
    return "\n".join(lines)


def add_checkpoint_parsers(subparsers: Any) -> None:
    """``download``, ``random-checkpoint`` and ``info``."""
    dl = subparsers.add_parser("download", help="download the official checkpoint and lyric vocabulary")
    dl.add_argument("--repo-id", default="ACE-Step/ACE-Step-v1-3.5B")
    dl.add_argument(
        "--model",
        default=None,
        help="an ACE-Step 1.5 DiT (e.g. acestep-v15-turbo, acestep-v15-base, acestep-v15-xl-turbo): download "
        "it with the VAE and text encoder into the official checkpoints/ layout instead of v1",
    )
    dl.add_argument(
        "--lm", default=None, help="ACE-Step 1.5: also download this 5 Hz LM (acestep-5Hz-lm-1.7B)"
    )
    dl.add_argument("--revision", default=None)
    dl.add_argument(
        "--dir",
        default=None,
        help=f"target folder (default {DEFAULT_CHECKPOINT_DIR}, 1.5: {DEFAULT_V15_CHECKPOINT_DIR})",
    )
    dl.set_defaults(func=cmd_download)

    rnd = subparsers.add_parser(
        "random-checkpoint", help="write a random-weight checkpoint folder (for tests/demos)"
    )
    rnd.add_argument("dir")
    rnd.add_argument("--size", default="tiny", choices=["tiny", "small"])
    rnd.add_argument("--seed", type=int, default=0)
    rnd.set_defaults(func=cmd_random_checkpoint)

    info = subparsers.add_parser(
        "info",
        help="show which model family a checkpoint folder is, its components and parameter counts",
    )
    info.add_argument("dir", nargs="?", default=None, help="checkpoint folder (default: songflow-tiny)")
    info.add_argument(
        "--hashes",
        action="store_true",
        help="also print the sha256 of each weight file (as sidecars record them; cached per file)",
    )
    info.set_defaults(func=cmd_info)
