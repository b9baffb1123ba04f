"""Rewrites the Kubernetes JSON schemas shipped by PyPI's `kubernetes-validate` for kubeconform.

usage: python kube_schemas.py VERSION OUT   (VERSION like 1.33.0; writes OUT/vVERSION-local[-strict]/)

kubernetes-validate's files are draft 2020 style: an `$id` and references to
`/api/_definitions.json#/$defs/...`, which kubeconform would resolve against a web address.
kubeconform wants sibling-file references, `_definitions.json#/definitions/...`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import kubernetes_validate

REWRITES = (("/api/_definitions.json#/$defs/", "_definitions.json#/definitions/"), ("#/$defs/", "#/definitions/"))


def rewrite(node: object) -> object:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$id":
                continue
            if key == "$ref" and isinstance(value, str):
                for old, new in REWRITES:
                    if value.startswith(old):
                        value = new + value[len(old) :]
                        break
            out["definitions" if key == "$defs" else key] = rewrite(value)
        return out
    if isinstance(node, list):
        return [rewrite(item) for item in node]
    return node


def main(version: str, out: Path) -> None:
    shipped = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    for flavour in ("local", "local-strict"):
        source, target = shipped / f"v{version}-{flavour}", out / f"v{version}-{flavour}"
        if not source.is_dir():
            raise SystemExit(f"kubernetes-validate has no schemas for {version} ({source})")
        target.mkdir(parents=True, exist_ok=True)
        for path in source.glob("*.json"):
            (target / path.name).write_text(json.dumps(rewrite(json.loads(path.read_text()))))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
