"""Renders or lints the chart with Helm's own Go SDK (helm-python-sdk), without a helm binary
or a cluster. The chart tests and `cargo xtask` run it from the pinned virtualenv that
`cargo xtask setup` makes (target/tools/helm).

    render.py render CHART NAMESPACE VALUES_JSON   -> {"manifests": {template: yaml}, "crds": [yaml]}
    render.py lint CHART VALUES_JSON               -> Helm's lint report (strict)

Errors (bad values, a template that fails) go to stderr with exit 1.
"""
import json
import sys

import helm_python as helm


def main() -> int:
    helm.disable_logging()
    mode, chart_dir = sys.argv[1], sys.argv[2]
    try:
        if mode == "render":
            namespace, values = sys.argv[3], json.loads(sys.argv[4])
            chart = helm.Chart.load(chart_dir)
            chart.validate_schema(values)
            manifests = chart.render(values, name="xdplb", namespace=namespace, is_install=True)
            out = {"manifests": manifests, "crds": [c["data"] for c in chart.crds]}
        elif mode == "lint":
            values = json.loads(sys.argv[3])
            out = helm.lint(chart_dir, values, strict=True, namespace="metallb-system")
        else:
            print(f"unknown mode {mode}", file=sys.stderr)
            return 2
    except helm.HelmError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
