"""A smoke training job against a real `mlflow server` on 127.0.0.1 (SQLite backend, served artifacts)."""

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mlabel_exp.runtime.distributed import free_port
from mlabel_exp.experiment.train import train
from tests.conftest import artifact_paths, compose_cfg, tiny_overrides

pytestmark = pytest.mark.integration  # every test here trains or starts processes


@pytest.fixture
def server(tmp_path):
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # bounded wait for start-up
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"mlflow server exited: {proc.stderr.read()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer within 60 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_training_against_a_tracking_server(server, tmp_path):
    from mlflow.tracking import MlflowClient

    overrides = [o for o in tiny_overrides(tmp_path, store=False) if not o.startswith("tracking.uri")]
    best = train(compose_cfg(*overrides, f"tracking.uri={server}", "tracking.experiment=team")).objective
    client = MlflowClient(server)
    (run,) = client.search_runs([client.get_experiment_by_name("team").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["val/best_mAP"] == pytest.approx(best)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/mAP")] == [1, 2]
    files = artifact_paths(client, run.info.run_id)
    assert {"curves.png", "predictions/val.csv", "checkpoints/best.pt", "config.yaml"} <= files
    local = client.download_artifacts(run.info.run_id, "predictions/val.csv", str(tmp_path))
    assert Path(local).read_text().startswith("file,")
    assert list((tmp_path / "server-artifacts").rglob("curves.png"))  # stored by the server, not the client
    assert not (tmp_path / "mlruns").exists()  # nothing fell back to a local store
