#!/usr/bin/env python3
"""Prints the features of Cargo.toml, comma-separated, for `cargo --features`.

    python3 .ci/features.py [--except NAME ...]

leaves out `default` and every NAME given after --except: the cross-target
checks and the Wine suite build every feature but `etcd`.
"""
import sys
import tomllib

args = sys.argv[1:]
left_out = set(args[1:]) if args[:1] == ["--except"] else set()
if args and args[:1] != ["--except"]:
    sys.exit(__doc__)
features = tomllib.load(open("Cargo.toml", "rb"))["features"]
print(",".join(sorted(set(features) - {"default"} - left_out)))
