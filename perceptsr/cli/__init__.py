"""The ``perceptsr`` command line: one small module per subcommand, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module under perceptsr.cli, one-line description). Each module defines
# ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "RankSRGAN vs SRGAN and EA-Adam vs weighted-sum Adam at demo scale, offline (no data needed)"),
    "train": ("train", "train a model from a YAML config (PSNR, GAN, RankSRGAN, Ranker, EA-Adam, fusion objectives), resumable, torchrun DDP"),
    "upscale": ("upscale", "super-resolve an image or a folder with a checkpoint (tiled, batched)"),
    "fuse": ("fuse", "EA-Adam stage C: collapse a trained fusion run into one plain network"),
    "metric": ("metric", "compute an image-quality metric on images or folders (PSNR, SSIM, NIQE, ...)"),
    "eval": ("eval", "benchmark models, SR folders and bicubic on datasets: results.json/.csv/.md tables"),
    "report": ("report", "self-contained HTML report: metric table, perception-distortion plane, curves, crops"),
    "rank-data": ("rank_data", "RankSRGAN stage 1: aligned, filtered, metric-labelled patches of SR levels (resumable)"),
    "convert": ("convert", "convert a checkpoint (.pth, old layouts) or an ncnn .param/.bin model to the native safetensors format"),
    "assets": ("assets", "list, fetch and verify weight and parameter files (assets)"),
    "reproduce": ("reproduce", "a paper's controlled comparison over seeds (RankSRGAN vs SRGAN, EA-Adam vs weighted-sum Adam), resumable"),
    "export": ("export", "export a generator to ONNX (dynamic batch/height/width), verified with onnxruntime"),
    "interpolate": ("interpolate", "network interpolation A -> B (ESRGAN net_interp), optionally scored as a PD curve"),
    "info": ("info", "model card: architecture, scale, parameters, iteration, provenance and stamped scores"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perceptsr",
        description="Perceptual image super-resolution: RankSRGAN, EA-Adam and calibrated SR metrics.",
    )
    from perceptsr import __version__

    parser.add_argument("--version", action="version", version=f"perceptsr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module_name, summary) in COMMANDS.items():
        sub.add_parser(name, help=summary, description=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    module_name, summary = COMMANDS[name]
    module = importlib.import_module(f"perceptsr.cli.{module_name}")
    command_parser = argparse.ArgumentParser(prog=f"perceptsr {name}", description=summary)
    module.add_arguments(command_parser)
    args = command_parser.parse_args(argv[1:])
    from perceptsr.errors import PerceptsrError

    try:
        return int(module.run(args) or 0)
    except PerceptsrError as exc:
        print(f"perceptsr {name}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
