"""``perceptsr convert IN OUT``: rewrite any supported checkpoint in the native safetensors format;
``perceptsr convert MODEL.param MODEL.bin OUT``: import an ncnn RRDBNet / SRVGGNetCompact
(:mod:`perceptsr.interop.ncnn`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="checkpoint to read (.pth/.pt/.ckpt/.safetensors, any supported "
                        "layout), or an ncnn .param graph followed by its .bin")
    parser.add_argument("bin", metavar="BIN", nargs="?", default=None, help="the ncnn .bin weights (only after a .param)")
    parser.add_argument("output", metavar="OUT", help="native .safetensors file to write")
    parser.add_argument("--arch", default=None, help="architecture name (default: from metadata or detected)")
    parser.add_argument(
        "--prefer-ema", action=argparse.BooleanOptionalAction, default=True,
        help="take params_ema over params when both exist (default: yes); with both present and EMA "
        "preferred, the output keeps both sets (EMA as main weights, raw weights under '__params__.')",
    )
    parser.add_argument("--key", default=None, help="take the weights under this key explicitly (e.g. params)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def _run_ncnn(args: argparse.Namespace, param: Path, bin_path: Path, dst: Path) -> int:
    from perceptsr.errors import CheckpointError
    from perceptsr.interop.ncnn import convert_ncnn

    if args.arch is not None or args.key is not None:
        raise CheckpointError(f"{param}: --arch and --key do not apply to ncnn models (the graph gives the architecture)")
    model = convert_ncnn(param, bin_path, dst)
    n_params = sum(v.numel() for v in model.state_dict.values())
    print(f"input:  {param} + {bin_path} (ncnn graph, {model.weight_dtype} weights, blobs "
          f"{model.input_blob!r} -> {model.output_blob!r})")
    print(f"arch:   {model.arch} {model.arch_kwargs} ({n_params:,} parameters)")
    print(f"check:  max |graph - network| = {model.verify_max_abs_diff:.3g} on a random 8x8 input")
    if (resize := model.output_resize) is not None:
        print(f"note:   the graph resizes the network's output ({resize['mode']}, x{resize['scale_h']:g}); the "
              "converted model is the network without that resize")
    print(f"wrote:  {dst}")
    return 0


def run(args: argparse.Namespace) -> int:
    from perceptsr.checkpoint import load_model, save_model
    from perceptsr.errors import CheckpointError

    src, dst = Path(args.input), Path(args.output)
    if dst.exists() and not args.overwrite:
        raise CheckpointError(f"{dst}: already exists (pass --overwrite to replace it)")
    if dst.exists() and any(p.exists() and dst.resolve() == p.resolve() for p in (src, Path(args.bin or src))):
        raise CheckpointError(f"{dst}: output must differ from the input")
    if src.suffix.lower() == ".param" or args.bin is not None:
        if src.suffix.lower() != ".param" or args.bin is None:
            raise CheckpointError(f"{src}: an ncnn model is converted as 'convert MODEL.param MODEL.bin OUT'")
        return _run_ncnn(args, src, Path(args.bin), dst)
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
