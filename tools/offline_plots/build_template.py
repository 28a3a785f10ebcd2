"""Build an HTML template for `dvc plots show/diff` that renders without internet access.

DVC's default HTML page loads vega, vega-lite and vega-embed from a CDN. This
script inlines the copies that `npm ci` installed next to it into
template.html, which `dvc plots diff --html-template` then fills in:

    npm ci --prefix tools/offline_plots
    python tools/offline_plots/build_template.py
    dvc plots diff --html-template tools/offline_plots/template.html <rev-a> <rev-b>
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "template.html"
# The versions DVC 3.67 (dvc-render 1.0.2) loads from its CDN, as pinned in package.json.
LIBRARIES = (
    "vega/build/vega.min.js",
    "vega-lite/build/vega-lite.min.js",
    "vega-embed/build/vega-embed.min.js",
)

PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>DVC plots</title>
{scripts}
<style>
  table {{ border-spacing: 15px; }}
</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def build_template(node_modules: Path = HERE / "node_modules", output: Path = TEMPLATE) -> Path:
    """Write the template with the three libraries inlined; return its path."""
    missing = [name for name in LIBRARIES if not (node_modules / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{', '.join(missing)} not found under {node_modules}; "
            f"run `npm ci --prefix {HERE}` first"
        )

    scripts = []
    for name in LIBRARIES:
        code = (node_modules / name).read_text(encoding="utf-8")
        # A literal "</script" would end the inline script early.
        code = code.replace("</script", "<\\/script")
        scripts.append(f"<script>\n{code}\n</script>")

    temporary = output.with_name(f".{output.name}.partial")
    temporary.write_text(PAGE.format(scripts="\n".join(scripts)), encoding="utf-8")
    temporary.replace(output)
    return output


if __name__ == "__main__":
    try:
        print(build_template())
    except FileNotFoundError as error:
        sys.exit(f"error: {error}")
