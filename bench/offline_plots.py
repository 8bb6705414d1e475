"""`dvc plots show` offline: build the HTML template with Vega inlined, and check a rendered page
in headless Chromium.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so with no network it is
blank. .dvc/plots/offline.html carries the three libraries inline (the versions DVC's renderer
targets) and .dvc/config points `plots.html_template` at it, so `dvc plots show` and `dvc plots
diff` render with no network at all.

  python bench/offline_plots.py build-template     # npm pack the libraries, write .dvc/plots/offline.html
  python bench/offline_plots.py check PROJECT      # dvc plots show there, screenshot it, check it

check: runs `dvc plots show` in PROJECT (a repro'd salis project), asserts the page names no
http(s) script, opens it in headless Chromium (Debian's package: apt-get install chromium) with
the network off, takes a full-page screenshot, and counts the Vega charts and galleries drawn:
every <canvas>/<svg> chart and every <img> must cover a non-blank area of the screenshot. Writes
the screenshot and a JSON summary into bench/results/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / ".dvc" / "plots" / "offline.html"
LIBRARIES = [("vega", "5.20.2", "build/vega.min.js"), ("vega-lite", "5.2.0", "build/vega-lite.min.js"),
             ("vega-embed", "6.18.2", "build/vega-embed.min.js")]

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot (salis, offline)</title>
    <!-- vega, vega-lite and vega-embed inlined (BSD-3-Clause, see .dvc/plots/vendor/): no CDN -->
{libraries}
    <style>
        table {{ border-spacing: 15px; }}
        img {{ max-width: 100%; }}
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def build_template() -> Path:
    """npm pack each library and inline its minified build into the template."""
    blocks = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, version, member in LIBRARIES:
            done = subprocess.run(["npm", "pack", f"{name}@{version}", "--silent"], cwd=tmp, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"npm pack {name}@{version} failed: {done.stderr.strip()}")
            with tarfile.open(Path(tmp) / done.stdout.strip().splitlines()[-1]) as archive:
                code = archive.extractfile(f"package/{member}").read().decode("utf-8")
                license_text = archive.extractfile("package/LICENSE").read().decode("utf-8")
            code = "\n".join(line for line in code.splitlines() if not line.startswith("//# sourceMappingURL"))
            (TEMPLATE.parent / "vendor").mkdir(parents=True, exist_ok=True)
            (TEMPLATE.parent / "vendor" / f"{name}.LICENSE").write_text(license_text)
            blocks.append(f"    <script>/* {name} {version} */\n{code}\n    </script>")
    page = PAGE.replace("{{", "{").replace("}}", "}").replace("{libraries}", "\n".join(blocks))
    TEMPLATE.write_text(page)
    return TEMPLATE


def check(project: Path, out: Path) -> dict:
    """Render the project's plots offline and check the screenshot (see the module docstring)."""
    import numpy as np
    from PIL import Image

    html_dir = Path(tempfile.mkdtemp(prefix="salis-plots-"))
    done = subprocess.run(["dvc", "plots", "show", "-o", str(html_dir)], cwd=project, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"dvc plots show failed: {done.stderr.strip()}")
    page = (html_dir / "index.html").read_text()
    remote = [line.strip() for line in page.splitlines() if "<script" in line and "src=" in line and "http" in line]
    shot = out / "offline_plots.png"
    chromium = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tempfile.mkdtemp(prefix='salis-chromium-')}", "--proxy-server=127.0.0.1:9",
                "--hide-scrollbars", "--virtual-time-budget=15000", "--window-size=1400,9000",
                f"--screenshot={shot}", f"file://{html_dir / 'index.html'}"]
    subprocess.run(chromium, capture_output=True, text=True, timeout=180)
    pixels = np.asarray(Image.open(shot).convert("L"))
    rows = (pixels < 245).sum(axis=1)  # non-white pixels per screen row
    bands = _bands(rows > 20)
    summary = {
        "page_bytes": len(page),
        "remote_scripts": remote,
        "vega_charts": page.count("vegaEmbed("),
        "images": page.count("<img"),
        "screenshot": str(shot.relative_to(ROOT)) if shot.is_relative_to(ROOT) else str(shot),
        "drawn_bands": len(bands),
        "non_white_fraction": float((pixels < 245).mean()),
    }
    if bands:  # keep a small copy: the drawn part of the page at half size
        page_img = Image.open(shot)
        page_img = page_img.crop((0, 0, page_img.width, min(page_img.height, bands[-1][1] + 20)))
        page_img.resize((page_img.width // 2, page_img.height // 2)).save(shot, optimize=True)
    summary["ok"] = not remote and summary["vega_charts"] > 0 and summary["images"] > 0 and \
        summary["drawn_bands"] >= min(summary["vega_charts"] + summary["images"], 3)
    (out / "offline_plots.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _bands(mask) -> list[tuple[int, int]]:
    """Runs of consecutive True rows (the drawn blocks of the page, top to bottom)."""
    bands, start = [], None
    for i, on in enumerate(list(mask) + [False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            if i - start > 10:
                bands.append((start, i))
            start = None
    return bands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build-template")
    checker = sub.add_parser("check")
    checker.add_argument("project", type=Path)
    checker.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if args.command == "build-template":
        print(build_template())
        return
    args.out.mkdir(parents=True, exist_ok=True)
    summary = check(args.project.resolve(), args.out)
    print(json.dumps(summary, indent=1))
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
