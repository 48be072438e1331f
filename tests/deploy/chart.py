"""Renders prodguard's Helm chart with Helm's own code (helm-python-sdk), as the deploy tests and
the end-to-end suite use it.

    python tests/deploy/chart.py [--namespace NS] [--values JSON]   # prints the render as YAML

The render holds the chart's crds/ (which Helm installs before the templates) and its templates,
without NOTES.txt, as `helm template --include-crds` prints them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "prodguard"


def load() -> helm.Chart:
    return helm.Chart.load(str(CHART))


def render_text(values: dict | None = None, namespace: str = "prodguard", name: str = "prodguard") -> str:
    """The render as one multi-document YAML text."""
    chart = load()
    try:
        chart.validate_schema(values or {})
        rendered = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
        parts = [crd["data"] for crd in chart.crds]
    finally:
        chart.close()
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        parts.append(rendered[path])
    return "\n---\n".join(part.strip("\n") for part in parts if part.strip()) + "\n"


def notes(values: dict | None = None, namespace: str = "prodguard") -> str:
    chart = load()
    try:
        rendered = chart.render(values or {}, name="prodguard", namespace=namespace, is_install=True)
    finally:
        chart.close()
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def render(values: dict | None = None, namespace: str = "prodguard") -> list[dict]:
    """The render's objects."""
    return [doc for doc in yaml.safe_load_all(render_text(values, namespace)) if doc]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default="prodguard")
    parser.add_argument("--values", default="{}", help="the values, as a JSON object")
    args = parser.parse_args()
    try:
        values = json.loads(args.values)
    except json.JSONDecodeError as e:
        print(f"--values: not JSON: {e}", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(render_text(values, args.namespace))
    except helm.HelmError as e:
        print(f"rendering {CHART}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
