"""Issue 4, part 3 (case W2): killed, raising and corrupt training runs leave the active model serving.

One real model (v1) is trained on a tiny Complete Journey slice in the test
process and activated. Then, against a real Celery worker on Redis:

(a private ``redis-server`` on a free port, so no other test run on the
machine can take or flush these messages):

* a run whose worker child is SIGKILLed mid-training, on every delivery, is
  redelivered by Celery (``acks_late`` + ``reject_on_worker_lost``), counted,
  and marked failed after ``MAX_ATTEMPTS`` deliveries;
* a run that raises (the artifact directory cannot be created) is marked
  failed with the exception;

and in the test process, a run whose artifact is corrupted between the
write and the check (a flipped byte in ``model.keras``) is marked failed by
the SHA-256 check; activating or scoring a corrupt artifact is refused.
After each, v1 is still the one active version and still loads and scores.
"""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from shop_bundles.models import BundleSuggestion, ModelVersion, TrainingRun
from shop_bundles.services import training as training_service
from shop_bundles.services.scoring import suggestions_score
from shop_bundles.services.training import model_version_activate, training_run_execute
from tests.integration.conftest import wait_for
from tests.integration.test_outbox_faults import (
    worker_on_private_redis,
)
from tests.shop.test_training import load_cj_slice, tiny_cj_slice

pytestmark = [pytest.mark.faults, pytest.mark.celery_worker, pytest.mark.slow]

MAX_QUERIES = 100


def _flip_a_byte(path: Path) -> None:
    """Corrupt a file in place: invert one byte in its middle."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _run(pk: int) -> TrainingRun:
    return TrainingRun.objects.get(pk=pk)


class WorkerHandle:
    """The worker process and its log."""

    def __init__(self, process, log_path: Path):
        self.process, self.log_path = process, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def private_worker(transactional_db, tmp_path, monkeypatch):
    """A real Celery worker (prefork, queues default + ml) on a private Redis, writing artifacts to
    ``tmp_path/models``; this process's Celery app sends to the same Redis. Stopped at teardown."""
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        pytest.skip("redis-server and redis-cli are needed for the model lifecycle fault test")
    from config.celery import app

    monkeypatch.setenv("SHOP_BUNDLES_ARTIFACT_DIR", str(tmp_path / "models"))  # read by the worker
    with worker_on_private_redis(app, tmp_path) as (_redis, worker):
        yield WorkerHandle(worker, tmp_path / "worker.log")


def test_killed_raising_and_corrupt_training_runs_leave_the_active_model_serving(
        private_worker, cj_slice, tmp_path, settings, monkeypatch):
    from bundling_ml import artifacts
    from shop_bundles.tasks import retrain_model

    celery_worker = private_worker
    load_cj_slice(tiny_cj_slice(cj_slice, households=25, weeks=8))
    settings.SHOP_BUNDLES_MIN_ANCHOR_BASKETS = 3
    worker_artifacts = tmp_path / "models"  # where the worker writes
    settings.SHOP_BUNDLES_ARTIFACT_DIR = str(tmp_path / "local")  # where this process writes

    # --- v1: a good model, trained here and activated ------------------------------------------
    first = training_run_execute(slot="setup", queue_scoring=False, max_queries=MAX_QUERIES)
    assert first["status"] == "succeeded" and first["activated"]
    v1 = ModelVersion.objects.get(is_active=True)
    meta = artifacts.verify_artifact(v1.artifact_path)
    assert meta["format_version"] == 2 and meta["checksums"]["algorithm"] == "sha256"
    assert set(meta["checksums"]["files"]) >= {"model.keras"}
    assert meta["checksums"]["files"]["model.keras"] == artifacts.file_sha256(Path(v1.artifact_path) / "model.keras")

    def v1_still_serves():
        assert list(ModelVersion.objects.filter(is_active=True)) == [v1]
        artifacts.verify_artifact(v1.artifact_path)

    # --- 1. SIGKILL of the worker child mid-training, on every delivery -------------------------
    killed = TrainingRun.objects.create(params={"trigger": "manual"})
    retrain_model.delay(run_id=killed.pk, trigger="manual")
    pids = []
    for attempt in range(1, training_service.MAX_ATTEMPTS + 1):
        run = wait_for(lambda: (lambda r: r if r.status == "running" and r.params.get("attempts") == attempt
                                and r.stage != "loading order history" else None)(_run(killed.pk)),
                       timeout=90, interval=0.1, what=f"training attempt {attempt} to be under way")
        pid = run.params["worker"]["pid"]
        assert pid != celery_worker.process.pid and pid not in pids  # a pool child, a fresh one each time
        pids.append(pid)
        os.kill(pid, signal.SIGKILL)
    run = wait_for(lambda: (lambda r: r if r.status == "failed" else None)(_run(killed.pk)), timeout=90,
                   interval=0.2, what="the killed run to be marked failed")
    assert f"worker was lost during training {training_service.MAX_ATTEMPTS} times" in run.error
    assert "previously active model stays active" in run.error
    assert run.params["attempts"] == training_service.MAX_ATTEMPTS and run.model_version_id is None
    assert celery_worker.log().count("SIGKILL") >= training_service.MAX_ATTEMPTS  # WorkerLostError, requeued
    v1_still_serves()

    # --- 2. a run that raises: the worker cannot create its artifact directory ----------------
    worker_artifacts.parent.mkdir(parents=True, exist_ok=True)
    worker_artifacts.write_text("a file where the model directory should be")
    retrain_model.delay(trigger="manual")
    raised = wait_for(lambda: TrainingRun.objects.exclude(pk__in=[first["run_id"], killed.pk])
                      .filter(status__in=["failed", "succeeded"]).first(),
                      timeout=180, interval=0.5, what="the raising run to finish")
    assert raised.status == "failed", raised.error
    assert raised.error.startswith("FileExistsError: ") and str(worker_artifacts) in raised.error
    assert raised.params["attempts"] == 1 and raised.model_version_id is None  # a raise is not retried
    v1_still_serves()

    # --- 3. a run whose artifact is corrupted after the write (torn write / disk error) ---------
    real_save = artifacts.save_model

    def save_then_corrupt(*args, **kwargs):
        out = real_save(*args, **kwargs)
        _flip_a_byte(Path(out) / artifacts.MODEL_FILE)
        return out

    monkeypatch.setattr(artifacts, "save_model", save_then_corrupt)
    with pytest.raises(artifacts.ArtifactCorruptError, match=r"is corrupt: model.keras has sha256 [0-9a-f]{64}"):
        training_run_execute(slot="corrupt", queue_scoring=False, max_queries=MAX_QUERIES)
    monkeypatch.setattr(artifacts, "save_model", real_save)
    corrupt = TrainingRun.objects.get(slot="corrupt")
    assert corrupt.status == "failed" and corrupt.error.startswith("ArtifactCorruptError: model artifact ")
    assert "was recorded when it was saved" in corrupt.error
    assert ModelVersion.objects.count() == 1
    v1_still_serves()

    # --- a corrupt copy of v1 is refused for activation and for scoring --------------------------
    copy_dir = tmp_path / "copy-of-v1"
    shutil.copytree(v1.artifact_path, copy_dir)
    _flip_a_byte(copy_dir / artifacts.MODEL_FILE)
    bad = ModelVersion.objects.create(label="v1-corrupt-copy", artifact_path=str(copy_dir))
    with pytest.raises(artifacts.ArtifactCorruptError, match="copy-of-v1 is corrupt: model.keras"):
        model_version_activate(version=bad)
    with pytest.raises(artifacts.ArtifactCorruptError, match="copy-of-v1 is corrupt: model.keras"):
        suggestions_score(model_version_id=bad.pk)
    assert not BundleSuggestion.objects.exists()
    v1_still_serves()
    scored = suggestions_score()  # the active model (v1) still loads and scores
    assert scored["model_version_id"] == v1.pk and scored["created"] > 0
    assert BundleSuggestion.objects.filter(model_version=v1).count() == scored["created"]
