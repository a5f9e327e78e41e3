"""``perceptsr assets list | fetch NAME... | verify [NAME...]``: weights and parameter files."""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="registered assets, where each is found, and their download URLs")
    fetch = sub.add_parser("fetch", help="download assets into the cache (sha256-checked)")
    fetch.add_argument("names", nargs="+", metavar="NAME")
    verify = sub.add_parser("verify", help="check the sha256 of the local files")
    verify.add_argument("names", nargs="*", metavar="NAME", help="default: all")


def run(args) -> int:
    from perceptsr import assets
    from perceptsr.errors import AssetError

    if args.action == "list":
        print(f"search path: {', '.join(str(d) for d in assets.asset_dirs())}")
        for a in assets.list_assets():
            where = assets.find_local(a.name)
            print(f"{a.name:16s} {str(where) if where else 'missing':s}")
            print(f"{'':16s} {a.relpath}: {a.description}")
            for s in a.sources:
                flag = "" if s.verified else " [URL unverified]"
                print(f"{'':16s} url: {s.url}{flag}")
            if a.origin:
                print(f"{'':16s} origin: {a.origin}")
        return 0
    if args.action == "fetch":
        status = 0
        for name in args.names:
            try:
                print(f"{name}: {assets.fetch_asset(name)}")
            except AssetError as exc:
                print(f"{name}: error: {exc}", file=sys.stderr)
                status = 1
        return status
    # verify
    names = args.names or [a.name for a in assets.list_assets()]
    status = 0
    for name in names:
        try:
            path = assets.find_local(name)
        except AssetError as exc:
            print(f"{name}: error: {exc}", file=sys.stderr)
            status = 1
            continue
        if path is None:
            print(f"{name:16s} missing")
            continue
        ok = assets.verify_file(name, path)
        word = {True: "ok", False: "MISMATCH", None: "present (no hash known)"}[ok]
        if ok is False:
            status = 1
        print(f"{name:16s} {word}  {path}")
    return status
