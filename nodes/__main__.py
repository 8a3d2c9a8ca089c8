"""Run one node of a launch file: ``python -m udml_stream_apps.nodes LAUNCH.toml NODE``.

Kept free of heavy imports so capture nodes start in well under a second; only the fusion node
imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys

from udml_stream.errors import UdmlError
from udml_stream.launch.config import load_launch, node_adapter
from udml_stream.transport.security import configure


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load the node's table and run it until stopped."""
    ap = argparse.ArgumentParser(prog="udml-node", description=__doc__)
    ap.add_argument("launch", help="launch TOML file")
    ap.add_argument("node", help="node name in the file")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a field of the node's table")
    args = ap.parse_args(argv)
    try:
        launch = load_launch(args.launch)
        spec = launch.nodes.get(args.node)
        if spec is None:
            print(f"error: no node {args.node!r} in {args.launch}", file=sys.stderr)
            return 2
        if args.set:
            data = spec.model_dump()
            for item in args.set:
                key, _, raw = item.partition("=")
                data[key] = json.loads(raw)
            spec = node_adapter().validate_python(data)
        # Every socket of the node (CURVE from [security], inbound size limits) before any opens.
        configure(launch.security.load())
    except UdmlError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if spec.program == "camera":
        from udml_stream_apps.nodes import camera as prog
    elif spec.program == "microphone":
        from udml_stream_apps.nodes import microphone as prog
    else:
        from udml_stream_apps.nodes import fusion as prog
    try:
        return prog.run(args.node, spec)
    except UdmlError as err:  # e.g. a checkpoint that cannot serve: say why, no traceback
        print(f"error: [{args.node}] {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
