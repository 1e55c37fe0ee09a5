"""Screenshots of the MLflow UI as a person sees it, taken in headless Chromium against a real `mlflow ui` on 127.0.0.1:

    run_page.png            a run's overview page
    run_metrics.png         the same run's "Model metrics" tab (its metric charts)
    runs_table.png          the experiment's runs table as the printed link opens it (tracking.client.run_url): sorted
                            by val/best_mAP, the key metrics and settings as columns; the sweep parent collapsed
    runs_table_expanded.png the same table after a click on the sweep parent's expander: its child runs (jobs) shown
    compare_runs.png        the compare-runs view of the sweep's jobs
    comparison_run.png      the run `python -m mlabel_exp.compare sweep=latest` logs: its description and metrics
    report.png              that comparison's report.html (a local file, no server)
    run_report.png          the single run's report.html

    .venv/bin/python tools/ui_screenshots.py [--out ui-screenshots]

Makes its own small store in a temporary folder (a 2-job smoke sweep, one run with a test split and a comparison of
the sweep), so it needs nothing but Debian's chromium (`apt-get install chromium`); without it, it says so and exits 3.
Most pages are plain `chromium --screenshot`; the expanded table needs a click, so that one drives Chromium over
its DevTools protocol (CDP) with aiohttp's websocket client (aiohttp comes with mlflow).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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
                  "--hide-scrollbars", "--window-size=1600,1000"]


def train(tmp: Path, *overrides: str) -> None:
    tiny = ["trainer=smoke", "trainer.device=cpu", "data.synthetic.num_images=120", "data.synthetic.image_size=32",
            "model.input_size=32", f"data.cache_dir={tmp / 'cache'}", "tracking.log_model=false",
            "tracking.experiment=mlabel-exp",
            f"tracking.uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"]
    flags = [o for o in overrides if o.startswith("-")]  # Hydra's -m goes before the overrides
    settings = [o for o in overrides if not o.startswith("-")]
    subprocess.run([sys.executable, "-m", "mlabel_exp.run", *flags, *tiny, *settings], check=True, cwd=REPO,
                   env={**os.environ, "MLABEL_EXP_ROOT": str(tmp)}, capture_output=True, text=True)


def compare_sweep(tmp: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mlabel_exp.compare", "sweep=latest", f"out={tmp / 'compare'}",
                           f"tracking.uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}", "experiment=mlabel-exp"],
                          cwd=REPO, env={**os.environ, "MLABEL_EXP_ROOT": str(tmp)}, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"compare failed: {done.stderr.strip()[-500:]}")


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
    """A page as it stands once loaded: no clicks."""
    subprocess.run([chromium, *CHROMIUM_FLAGS, "--virtual-time-budget=20000", f"--user-data-dir={profile}",
                    f"--screenshot={png}", url], check=True, capture_output=True, timeout=120)
    print(f"{png}  <-  {url}")


class Page:
    """Just enough of Chromium's DevTools protocol for one tab: a call waits for its own answer, events are skipped."""

    def __init__(self, ws) -> None:
        self.ws, self.last_id = ws, 0

    async def call(self, method: str, **params) -> dict:
        self.last_id += 1
        await self.ws.send_json({"id": self.last_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def js(self, expression: str):
        answer = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return answer["result"].get("value")

    async def wait_for(self, expression: str, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not await self.js(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} after {timeout:.0f} s")
            await asyncio.sleep(0.5)


def devtools_port(chromium: subprocess.Popen, profile: Path) -> int:
    """Chromium started with --remote-debugging-port=0 writes the port it chose to <profile>/DevToolsActivePort."""
    port_file = profile / "DevToolsActivePort"
    for _ in range(120):  # bounded wait
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text().split()[0])
        if chromium.poll() is not None:
            break
        time.sleep(0.25)
    sys.exit("chromium did not open its DevTools port (it exited, or 30 s passed)")


async def expand_and_capture(port: int, url: str, parent: str, children: list[str]) -> bytes:
    import aiohttp  # a dependency of mlflow (not of this project directly)

    def link(run_id: str) -> str:  # the run-name link of a run's row in the runs table
        return f'document.querySelector(\'a[href$="/runs/{run_id}"]\')'

    tabs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
    tab = next(t for t in tabs if t["type"] == "page")
    async with aiohttp.ClientSession() as session, session.ws_connect(tab["webSocketDebuggerUrl"],
                                                                      max_msg_size=0) as ws:
        page = Page(ws)
        await page.call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1,
                        mobile=False)  # the same size as the plain shots (a headless window's page is shorter)
        await page.call("Page.navigate", url=url)
        await page.wait_for(f"{link(parent)} !== null", "row for the sweep parent")
        # The expander is the only button in the run-name cell of a parent row (a "+" square; "-" once open)
        box = await page.js(f"""(() => {{
            const button = {link(parent)}.closest('.ag-cell').querySelector('button');
            if (!button) return null;
            const r = button.getBoundingClientRect();
            return {{x: r.x + r.width / 2, y: r.y + r.height / 2}};
        }})()""")
        if box is None:
            raise RuntimeError("the sweep parent's row has no expander button")
        for event in ("mousePressed", "mouseReleased"):  # a real click, where a person would click
            await page.call("Input.dispatchMouseEvent", type=event, button="left", clickCount=1, **box)
        await page.call("Input.dispatchMouseEvent", type="mouseMoved", x=0, y=0)  # no hover effects in the shot
        await page.wait_for(" && ".join(f"{link(child)} !== null" for child in children), "child rows after the click")
        await asyncio.sleep(2)  # let row colours, durations and icons settle
        return base64.b64decode((await page.call("Page.captureScreenshot", format="png"))["data"])


def shoot_expanded(chromium: str, url: str, png: Path, profile: Path, parent: str, children: list[str]) -> None:
    """The runs table after a click on the expander of the parent run's row, once its child rows are there."""
    (profile / "DevToolsActivePort").unlink(missing_ok=True)
    browser = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                "--remote-debugging-port=0", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = devtools_port(browser, profile)
        png.write_bytes(asyncio.run(asyncio.wait_for(expand_and_capture(port, url, parent, children), 120)))
    finally:
        browser.terminate()
        browser.wait(timeout=30)
    print(f"{png}  <-  {url}  (parent {parent} expanded)")


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--out", default="ui-screenshots", help="folder for the PNGs")
    out = Path(args.parse_args().out).resolve()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium is not installed (apt-get install chromium): no screenshots taken", file=sys.stderr)
        return 3
    sys.path.insert(0, str(REPO))
    from mlabel_exp.tracking.client import UI_VIEW, run_url
    from mlabel_exp.runtime.distributed import free_port

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        train(tmp, "-m", "dropout=none,heavy", f"hydra.sweep.dir={tmp / 'multirun'}")
        train(tmp, "data.test_fraction=0.2", f"trainer.output_dir={tmp / 'single'}")
        compare_sweep(tmp)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")
        exp = client.get_experiment_by_name("mlabel-exp").experiment_id
        runs = client.search_runs([exp], order_by=["attributes.start_time DESC"])
        single = runs[0].info.run_id
        children = [r.info.run_id for r in runs if "mlflow.parentRunId" in r.data.tags]
        parent = next(r.data.tags["mlflow.parentRunId"] for r in runs if "mlflow.parentRunId" in r.data.tags)
        comparisons = client.get_experiment_by_name("mlabel-exp-comparisons").experiment_id
        comparison = client.search_runs([comparisons])[0].info.run_id
        shoot(chromium, (tmp / "compare" / "report.html").as_uri(), out / "report.png", tmp / "profile")
        shoot(chromium, (tmp / "single" / "report.html").as_uri(), out / "run_report.png", tmp / "profile")
        port = free_port()
        server = serve(tmp, port)
        base = f"http://127.0.0.1:{port}"
        try:
            shoot(chromium, run_url(base, exp, single), out / "run_page.png", tmp / "profile")
            metrics = run_url(base, exp, single).replace(f"/runs/{single}?", f"/runs/{single}/model-metrics?")
            shoot(chromium, metrics, out / "run_metrics.png", tmp / "profile")
            shoot(chromium, run_url(base, exp), out / "runs_table.png", tmp / "profile")
            # sorted by a metric the UI lists runs flat: the parent's expander shows in the default order only
            shoot_expanded(chromium, f"{base}/#/experiments/{exp}/runs?{UI_VIEW}", out / "runs_table_expanded.png",
                           tmp / "profile",
                           parent, children)
            compare = (f"{base}/#/compare-runs?runs={json.dumps(children)}&experiments={json.dumps([exp])}"
                       f"&{UI_VIEW}")
            shoot(chromium, compare, out / "compare_runs.png", tmp / "profile")
            shoot(chromium, run_url(base, comparisons, comparison), out / "comparison_run.png", tmp / "profile")
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
