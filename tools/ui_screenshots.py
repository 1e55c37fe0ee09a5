"""Screenshots of the MLflow UI as a person sees it: a run page and its metric charts, the experiment's runs table
(a sweep parent with its winner) and a compare-runs view, taken in headless Chromium against a real `mlflow ui` on 127.0.0.1.

    .venv/bin/python tools/ui_screenshots.py [--out ui-screenshots]

Makes its own small store in a temporary folder (a 2-job smoke sweep and one run with a test split), so it
needs nothing but Debian's chromium (`apt-get install chromium`); without it, it says so and exits 3.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1600,1000", "--virtual-time-budget=20000"]


def train(tmp: Path, *overrides: str) -> None:
    tiny = ["trainer=smoke", "trainer.device=cpu", "data.synthetic.num_images=120", "data.synthetic.image_size=32",
            "model.input_size=32", f"data.cache_dir={tmp / 'cache'}", "tracking.log_model=false",
            f"tracking.uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"]
    flags = [o for o in overrides if o.startswith("-")]  # Hydra's -m goes before the overrides
    settings = [o for o in overrides if not o.startswith("-")]
    subprocess.run([sys.executable, "-m", "mlabel_exp.run", *flags, *tiny, *settings], check=True, cwd=REPO,
                   env={**os.environ, "MLABEL_EXP_ROOT": str(tmp)}, capture_output=True, text=True)


def serve(tmp: Path, port: int) -> subprocess.Popen:
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}",
                             "--workers", "1", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):  # bounded wait
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    sys.exit("mlflow ui did not answer within 60 s")


def shoot(chromium: str, url: str, png: Path, profile: Path) -> None:
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}", url],
                   check=True, capture_output=True, timeout=120)
    print(f"{png}  <-  {url}")


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--out", default="ui-screenshots", help="folder for the PNGs")
    out = Path(args.parse_args().out).resolve()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium is not installed (apt-get install chromium): no screenshots taken", file=sys.stderr)
        return 3
    sys.path.insert(0, str(REPO))
    from mlabel_exp.distributed import free_port
    from mlabel_exp.tracking import UI_VIEW, run_url

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        train(tmp, "-m", "dropout=none,heavy", f"hydra.sweep.dir={tmp / 'multirun'}")
        train(tmp, "data.test_fraction=0.2", f"trainer.output_dir={tmp / 'single'}")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")
        exp = client.get_experiment_by_name("mlabel-exp").experiment_id
        runs = client.search_runs([exp], order_by=["attributes.start_time DESC"])
        single = runs[0].info.run_id
        children = [r.info.run_id for r in runs if "mlflow.parentRunId" in r.data.tags]
        port = free_port()
        server = serve(tmp, port)
        base = f"http://127.0.0.1:{port}"
        try:
            shoot(chromium, run_url(base, exp, single), out / "run_page.png", tmp / "profile")
            metrics = run_url(base, exp, single).replace(f"/runs/{single}?", f"/runs/{single}/model-metrics?")
            shoot(chromium, metrics, out / "run_metrics.png", tmp / "profile")
            shoot(chromium, run_url(base, exp), out / "runs_table.png", tmp / "profile")
            compare = (f"{base}/#/compare-runs?runs={json.dumps(children)}&experiments={json.dumps([exp])}"
                       f"&{UI_VIEW}")
            shoot(chromium, compare, out / "compare_runs.png", tmp / "profile")
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
