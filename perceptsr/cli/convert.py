"""``perceptsr convert IN OUT``: rewrite any supported checkpoint in the native safetensors format."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="checkpoint to read (.pth/.pt/.ckpt/.safetensors, any supported layout)")
    parser.add_argument("output", metavar="OUT", help="native .safetensors file to write")
    parser.add_argument("--arch", default=None, help="architecture name (default: from metadata or detected)")
    parser.add_argument(
        "--prefer-ema", action=argparse.BooleanOptionalAction, default=True,
        help="take params_ema over params when both exist (default: yes); with both present and EMA "
        "preferred, the output keeps both sets (EMA as main weights, raw weights under '__params__.')",
    )
    parser.add_argument("--key", default=None, help="take the weights under this key explicitly (e.g. params)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from perceptsr.checkpoint import load_model, save_model
    from perceptsr.errors import CheckpointError

    src, dst = Path(args.input), Path(args.output)
    if dst.exists() and not args.overwrite:
        raise CheckpointError(f"{dst}: already exists (pass --overwrite to replace it)")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise CheckpointError(f"{dst}: output must differ from the input")
    model = load_model(src, arch=args.arch, prefer_ema=args.prefer_ema, key=args.key)
    meta = model.perceptsr_meta
    raw_model = None
    if meta["ema"] and args.key is None and "params" in [k.split("/")[-1] for k in meta["available"]]:
        raw_model = load_model(src, arch=meta["arch"], arch_kwargs=meta["arch_kwargs"], prefer_ema=False)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"input:  {src} ({meta['file_format']} file, weights {meta['weights_key'] or '(top level)'}"
          f" of {', '.join(map(repr, meta['available']))}, layout {meta['layout']})")
    print(f"arch:   {meta['arch']} {meta['arch_kwargs']} ({n_params:,} parameters)")
    if meta.get("scale"):
        print(f"scale:  x{meta['scale']}")
    print(f"ema:    {'yes' if meta['ema'] else 'no'}" + (" (raw weights kept too)" if raw_model is not None else ""))
    extra = dict(meta.get("extra") or {})
    extra.update({"converted_from": src.name, "source_layout": meta["layout"], "source_key": meta["weights_key"]})
    if raw_model is not None:
        save_model(dst, raw_model, ema_model=model, arch=meta["arch"], arch_kwargs=meta["arch_kwargs"],
                   iteration=meta.get("iteration"), metrics=meta.get("metrics"), extra=extra)
    else:
        save_model(dst, model, arch=meta["arch"], arch_kwargs=meta["arch_kwargs"], is_ema=meta["ema"],
                   iteration=meta.get("iteration"), metrics=meta.get("metrics"), extra=extra)
    print(f"wrote:  {dst}")
    return 0
