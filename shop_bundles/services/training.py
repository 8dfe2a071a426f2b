"""Training runs: pull the order history, train and backtest a model, keep the better one active.

``bundling_ml`` (and through it TensorFlow) is imported inside
``training_run_execute`` only, so importing this module stays cheap in the
web process and in Celery beat.

Delivery guarantees (cases W1/W2):

* A run is keyed by its ``slot`` (unique). A scheduled run without an
  explicit slot uses ``schedule:<local date>``. A second delivery for a slot
  whose run has finished, or is being trained by a live worker, exits early
  with status ``duplicate`` and says why.
* On PostgreSQL the worker holds a session advisory lock on the run while it
  trains. The lock dies with the worker's connection, so a redelivery that
  finds the run ``running`` *and* can take the lock knows the previous worker
  was lost (SIGKILL, OOM). It retries up to ``MAX_ATTEMPTS`` attempts in all, then
  marks the run failed; the previously active model stays active throughout.
  The redelivery itself comes from Celery: ``retrain_model`` is ``acks_late``
  and ``CELERY_TASK_REJECT_ON_WORKER_LOST`` is on, so when the pool child
  dies (SIGKILL, OOM) the message is requeued at once instead of being acked
  as failed; when the whole worker host disappears, Redis redelivers it after
  the visibility timeout. ``params["worker"]`` records the host and pid of the
  child that trains (operators can see which process to look at).
* A run that raises is marked failed with ``"<ExcType>: <message>"`` and the
  traceback in ``error``; nothing is activated.
* The artifact's SHA-256 checksums (written by ``bundling_ml.artifacts``) are
  verified before the new version is recorded, and again by
  :func:`model_version_activate` and on every model load for scoring, so a
  corrupt artifact fails the run (or the activation / scoring) with
  ``ArtifactCorruptError`` naming the file; the active model is untouched.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from .. import app_settings, ml_bridge
from ..models import ModelVersion, StaffAction, TrainingRun

logger = logging.getLogger(__name__)

#: A new version is activated unless its model NDCG@10 is more than this share below the active one's.
MAX_RELATIVE_NDCG_DROP = 0.02
#: Deliveries of one run (first + redeliveries after a lost worker) before it is marked failed.
MAX_ATTEMPTS = 3
#: Seconds a delivery for a ``running`` run retries the lock (the killed worker's backend may linger).
LOST_WORKER_LOCK_WAIT = 3.0
#: Seconds between progress writes (stage changes are always written).
PROGRESS_INTERVAL = 1.0
_LOCK_CLASS = 0x5B0D  # first key of the advisory lock pair (shop_bundles training); second is the run id

# Share of the overall progress bar spent loading data before ``train_model`` starts.
_LOAD_SHARE = 0.05


def schedule_slot(trigger: str, slot: str | None) -> str | None:
    """The slot key for a run: the given slot, ``schedule:<local date>`` for scheduled runs, else None."""
    if slot:
        return slot
    if trigger == "schedule":
        return f"schedule:{timezone.localdate().isoformat()}"
    return None


@contextmanager
def _run_lock(run_id: int, *, wait: float = 0.0):
    """Try a session advisory lock on the run (PostgreSQL); yields True when held (always True elsewhere).

    ``wait`` seconds of retries (every 0.25 s) cover a redelivery that arrives
    while the database has not yet noticed the killed worker's connection
    (its backend still holds the lock for a moment).
    """
    if connection.vendor != "postgresql":
        yield True
        return
    deadline = time.monotonic() + wait
    while True:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_LOCK_CLASS, int(run_id)])
            held = bool(cursor.fetchone()[0])
        if held or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    try:
        yield held
    finally:
        if held:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_LOCK_CLASS, int(run_id)])
            except Exception:  # pragma: no cover - connection already gone: the lock went with it
                logger.warning("could not release the advisory lock of training run %s", run_id)


def _result(run: TrainingRun, status: str | None = None, message: str = "", **extra) -> dict:
    """The task's JSON result for ``run``."""
    out = {"run_id": run.pk, "status": status or run.status, "model_version_id": run.model_version_id,
           "message": message}
    out.update(extra)
    return out


def _model_ndcg(metrics: dict | None, system: str = "model") -> float | None:
    """NDCG@10 of the ``system`` row (default ``model``) of a backtest table, or None."""
    for row in (metrics or {}).get("rows", []):
        if row.get("system") == system:
            value = row.get("ndcg@10")
            return None if value is None else float(value)
    return None


#: the baseline a backtest on other test weeks is normalised by (:func:`activation_decision`)
GATE_BASELINE = "cooccurrence_count"


def _lift_over_baseline(metrics: dict | None) -> float | None:
    """The model's NDCG@10 divided by :data:`GATE_BASELINE`'s on the same test queries, or None."""
    model, base = _model_ndcg(metrics), _model_ndcg(metrics, GATE_BASELINE)
    if model is None or not base:
        return None
    return model / base


def _load_run(*, run_id: int | None, trigger: str, slot: str | None, user=None) -> tuple[TrainingRun, bool]:
    """Create or load the run; returns (run, created)."""
    if run_id is not None:
        return TrainingRun.objects.get(pk=run_id), False
    if slot is None:
        return TrainingRun.objects.create(params={"trigger": trigger}, requested_by=user), True
    try:
        with transaction.atomic():
            return TrainingRun.objects.create(slot=slot, params={"trigger": trigger}, requested_by=user), True
    except IntegrityError:
        return TrainingRun.objects.get(slot=slot), False


def model_version_activate(*, version: ModelVersion, user=None, note: str = "") -> ModelVersion:
    """Make ``version`` the only active model version (one transaction).

    The artifact is verified first (``bundling_ml.artifacts.verify_artifact``:
    files present, SHA-256 as recorded at save; no TensorFlow import).
    Records a StaffAction (action ``activate_model``) when ``user`` is given.

    Raises:
        ArtifactCorruptError: the artifact is missing or corrupt; the active version is not changed.
    """
    from bundling_ml.artifacts import verify_artifact

    verify_artifact(version.artifact_path)
    with transaction.atomic():
        now = timezone.now()
        ModelVersion.objects.select_for_update().filter(is_active=True).exclude(pk=version.pk).update(is_active=False)
        version.is_active = True
        version.activated_at = now
        if note:
            version.notes = (version.notes + "\n" if version.notes else "") + note
        version.save(update_fields=["is_active", "activated_at", "notes"])
        if user is not None:
            StaffAction.objects.create(user=user, action="activate_model", created_at=now,
                                       detail=f"model version {version.label} (id {version.pk})")
    return version


def activation_decision(new_metrics: dict, active_metrics: dict | None, *,
                        active_label: str = "") -> tuple[bool, str]:
    """Decide whether a new version replaces the active one (pure; no database access).

    Args:
        new_metrics: backtest metrics of the new version (``{"rows": [{"system": "model", "ndcg@10": ...}, ...]}``).
        active_metrics: metrics of the active version, or None when there is no active version.
        active_label: the active version's label, used in the note.

    Returns:
        ``(activate, note)``: activate unless the new model's NDCG@10 is more than
        ``MAX_RELATIVE_NDCG_DROP`` below the active one's; the note says why.

    Two backtests with the same ``split_date`` ran on the same test weeks and
    are compared by NDCG@10 itself. A retrain on more data usually has a later
    split (the last ~20 % of weeks), and NDCG@10 on other weeks is not the
    same measurement (a holiday month scores differently from a quiet one).
    Then each model's NDCG@10 is divided by the co-occurrence count
    baseline's on its own test queries (:data:`GATE_BASELINE`, measured in
    the same backtest), and the 2 % rule applies to that lift; a table
    without the baseline falls back to NDCG@10 itself.
    """
    if active_metrics is None:
        return True, "activated: first model version"
    new_ndcg = _model_ndcg(new_metrics)
    old_ndcg = _model_ndcg(active_metrics)
    if old_ndcg is None or new_ndcg is None:
        return True, f"activated: the active version {active_label} has no comparable NDCG@10"
    new_split, old_split = new_metrics.get("split_date"), active_metrics.get("split_date")
    new_lift, old_lift = _lift_over_baseline(new_metrics), _lift_over_baseline(active_metrics)
    if new_split and old_split and new_split != old_split and new_lift is not None and old_lift is not None:
        which = (f"backtests split at {new_split} and {old_split} (other test weeks), so compared by NDCG@10 "
                 f"relative to the co-occurrence count baseline on each one's own test weeks")
        if new_lift >= old_lift * (1 - MAX_RELATIVE_NDCG_DROP):
            return True, (f"activated: NDCG@10 {new_ndcg:.4f} = {new_lift:.3f}x count vs {old_ndcg:.4f} = "
                          f"{old_lift:.3f}x count of {active_label}; {which}")
        return False, (f"kept inactive: NDCG@10 {new_ndcg:.4f} = {new_lift:.3f}x count is more than "
                       f"{MAX_RELATIVE_NDCG_DROP:.0%} below {old_lift:.3f}x count ({old_ndcg:.4f}) of the active "
                       f"version {active_label}; {which}")
    if new_ndcg >= old_ndcg * (1 - MAX_RELATIVE_NDCG_DROP):
        return True, f"activated: NDCG@10 {new_ndcg:.4f} vs {old_ndcg:.4f} of {active_label}"
    return False, (f"kept inactive: NDCG@10 {new_ndcg:.4f} is more than {MAX_RELATIVE_NDCG_DROP:.0%} below "
                   f"{old_ndcg:.4f} of the active version {active_label}")


def _activation_decision(new_metrics: dict) -> tuple[bool, str]:
    """:func:`activation_decision` against the currently active version. Returns (activate, note)."""
    active = ModelVersion.objects.filter(is_active=True).first()
    if active is None:
        return activation_decision(new_metrics, None)
    return activation_decision(new_metrics, active.metrics or {}, active_label=active.label)


def training_run_execute(*, run_id: int | None = None, trigger: str = "manual", slot: str | None = None,
                         split_date: date | str | None = None, queue_scoring: bool = True,
                         max_queries: int | None = None, user=None,
                         on_progress: Callable[[float, str], None] | None = None) -> dict:
    """Train and backtest a new model version from all orders in the database.

    Args:
        run_id: an existing (queued) TrainingRun to execute; None creates one.
        trigger: ``manual`` (admin, command) or ``schedule`` (beat).
        slot: schedule slot key (unique); default ``schedule:<local date>`` for scheduled runs.
        split_date: temporal split date of the backtest (default: the last ~20 % of weeks test).
        queue_scoring: queue ``score_suggestions`` for the new version on commit when it was activated.
        max_queries: cap on backtest queries (passed to ``train_model``; None = protocol default).
        user: who asked (stored as ``requested_by`` on a new run).
        on_progress: extra callback ``(fraction 0..1, stage)`` (e.g. a progress bar).

    Returns:
        ``{"run_id": int, "status": "succeeded" | "failed" | "duplicate", "model_version_id": int | None,
        "message": str, "activated": bool, "metrics": dict, "seconds": float}`` (the last three
        only for a run trained by this call).

    Raises:
        Any exception from loading or training, after the run is marked failed with its text.
    """
    slot = schedule_slot(trigger, slot)
    run, created = _load_run(run_id=run_id, trigger=trigger, slot=slot, user=user)
    if run.status in (TrainingRun.SUCCEEDED, TrainingRun.FAILED):
        what = f"slot {run.slot}" if run.slot else f"run {run.pk}"
        return _result(run, "duplicate", f"{what} already {run.status} at {run.finished_at:%Y-%m-%d %H:%M}; "
                                        "not training again.")

    with _run_lock(run.pk, wait=LOST_WORKER_LOCK_WAIT if run.status == TrainingRun.RUNNING else 0.0) as held:
        if not held:
            return _result(run, "duplicate", f"run {run.pk} (slot {run.slot}) is being trained by another worker.")
        run.refresh_from_db()
        if run.status in (TrainingRun.SUCCEEDED, TrainingRun.FAILED):
            return _result(run, "duplicate", f"run {run.pk} already {run.status}.")
        attempts = int(run.params.get("attempts", 0)) + 1
        if run.status == TrainingRun.RUNNING and attempts > MAX_ATTEMPTS:
            run.status, run.finished_at = TrainingRun.FAILED, timezone.now()
            run.error = (f"The worker was lost during training {attempts - 1} times (killed or out of memory); "
                         "giving up. The previously active model stays active.")
            run.save(update_fields=["status", "finished_at", "error"])
            logger.error("training run %s: %s", run.pk, run.error)
            return _result(run, message=run.error)
        if run.status == TrainingRun.RUNNING:
            logger.warning("training run %s: previous worker lost; attempt %s of %s", run.pk, attempts, MAX_ATTEMPTS)
        return _train(run, attempts=attempts, trigger=trigger, split_date=split_date, queue_scoring=queue_scoring,
                      max_queries=max_queries, on_progress=on_progress)


def _train(run: TrainingRun, *, attempts: int, trigger: str, split_date, queue_scoring: bool,
           max_queries: int | None, on_progress) -> dict:
    """Body of ``training_run_execute`` once the run is claimed."""
    started = time.monotonic()
    excluded = tuple(app_settings.get("EXCLUDED_DEPARTMENTS"))
    run.status, run.started_at, run.finished_at = TrainingRun.RUNNING, timezone.now(), None
    run.progress, run.stage, run.error = 0.0, "loading order history", ""
    run.params = {**run.params, "trigger": trigger, "attempts": attempts, "seed": 0,
                  "worker": {"host": socket.gethostname(), "pid": os.getpid()},
                  "split_date": str(split_date) if split_date else None, "excluded_departments": list(excluded),
                  "max_queries": max_queries}
    run.save(update_fields=["status", "started_at", "finished_at", "progress", "stage", "error", "params"])

    state = {"saved_at": 0.0, "stage": run.stage, "progress": 0.0}

    def report(fraction: float, stage: str) -> None:
        """Throttled progress writer: stage changes at once, otherwise at most once per PROGRESS_INTERVAL."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        now = time.monotonic()
        if on_progress is not None:
            on_progress(fraction, stage)
        if stage == state["stage"] and now - state["saved_at"] < PROGRESS_INTERVAL and fraction < 1.0:
            return
        state.update(saved_at=now, stage=stage, progress=fraction)
        run.progress, run.stage = round(fraction, 4), str(stage)[:100]
        run.save(update_fields=["progress", "stage"])

    try:
        lines = ml_bridge.lines_frame()
        products = ml_bridge.products_frame()
        if lines.empty:
            raise ValueError("There are no order lines to train on; import orders first.")
        data_start, data_end = ml_bridge.data_window(lines)
        run.data_start, run.data_end = data_start, data_end
        run.save(update_fields=["data_start", "data_end"])
        load_seconds = time.monotonic() - started
        report(_LOAD_SHARE, f"loaded {len(lines):,} order lines")

        from bundling_ml.pipeline import train_model  # TensorFlow is imported below this line only

        label = f"v{timezone.now():%Y%m%d-%H%M%S}-run{run.pk}"
        out_dir = Path(app_settings.artifact_dir()) / label
        result = train_model(
            lines, products, out_dir=out_dir, split_date=split_date, seed=0, excluded_departments=excluded,
            progress=lambda f, s: report(_LOAD_SHARE + (1 - _LOAD_SHARE) * 0.999 * float(f), s),
            max_queries=max_queries, sample_baskets=app_settings.get("BACKTEST_SAMPLE_BASKETS"),
            promotions=ml_bridge.promotions_frame(),
            anon_seeds=int(app_settings.get("ANONYMOUS_ENSEMBLE")),
        )
        # A corrupt artifact (torn write, disk error) fails the run here, before any version is recorded.
        from bundling_ml.artifacts import verify_artifact

        verify_artifact(result.artifact_dir)
        metrics = dict(result.metrics)
        history = {k: [float(v) for v in vals] for k, vals in dict(result.history or {}).items()}
        split = metrics.get("split_date")
        seconds = time.monotonic() - started

        with transaction.atomic():
            activate, note = _activation_decision(metrics)
            version = ModelVersion.objects.create(
                label=label, artifact_path=str(result.artifact_dir), data_start=data_start, data_end=data_end,
                split_date=date.fromisoformat(split) if split else None,
                metadata={**dict(result.metadata or {}), "training_run": run.pk, "lines": int(len(lines)),
                          "load_seconds": round(load_seconds, 2), "seconds": round(seconds, 2)},
                metrics=metrics, notes=note,
            )
            if activate:
                model_version_activate(version=version)
            run.status, run.finished_at, run.progress, run.stage = (
                TrainingRun.SUCCEEDED, timezone.now(), 1.0, "done")
            run.model_version, run.metrics, run.history = version, metrics, history
            run.split_date = version.split_date
            run.save()
            if activate and queue_scoring:
                transaction.on_commit(lambda: _score_after_training(run.pk, version.pk))
        logger.info("training run %s succeeded: %s (%s)", run.pk, label, note)
        return _result(run, message=note, activated=activate, metrics=metrics, seconds=round(seconds, 2),
                       scoring_queued=bool(activate and queue_scoring))
    except BaseException as exc:
        text = f"{type(exc).__name__}: {exc}"
        tb = traceback.format_exc(limit=8)
        TrainingRun.objects.filter(pk=run.pk).update(
            status=TrainingRun.FAILED, finished_at=timezone.now(), error=f"{text}\n\n{tb}"[:20000])
        run.status = TrainingRun.FAILED
        if isinstance(exc, ValueError):  # the data cannot be trained on (too little history...): no traceback needed
            logger.warning("training run %s failed: %s", run.pk, text)
        else:
            logger.exception("training run %s failed", run.pk)
        raise


def _score_after_training(run_id: int, version_id: int) -> None:
    """Send ``score_suggestions`` for a newly activated version (called on the training's commit).

    The training has succeeded and is committed by now, so a failure here (a
    broker that refuses the message, or in demo mode, where the task runs
    eagerly, the scoring itself) must not mark the run failed: the run keeps
    ``succeeded`` and its ``error`` says that scoring failed and how to retry;
    the exception is logged.
    """
    from ..tasks import score_suggestions

    try:
        score_suggestions.delay(version_id)
    except Exception as exc:
        logger.exception("training run %s: scoring model version %s failed", run_id, version_id)
        TrainingRun.objects.filter(pk=run_id).update(
            error=f"The model was trained and activated, but scoring its suggestions failed: {type(exc).__name__}: {exc}. "
                  "Retry with `manage.py score_bundles` (the hourly schedule also retries).")


#: a queued or running TrainingRun younger than this holds back a manual "Retrain now" (3 attempts of at most
#: 3 h 05 min each, ``tasks.retrain_model``); an older one is taken to be lost with its worker and blocks nothing
IN_PROGRESS_WINDOW = timedelta(hours=10)


def training_run_in_progress(now=None) -> TrainingRun | None:
    """The newest TrainingRun still queued or running and created within :data:`IN_PROGRESS_WINDOW`, or None.

    The admin's "Retrain now" refuses to queue a second training while one is
    in progress (two clicks used to start two full trainings, and the older
    one's scoring then wrote suggestions of a superseded model).
    """
    now = now or timezone.now()
    return (TrainingRun.objects.filter(status__in=[TrainingRun.QUEUED, TrainingRun.RUNNING],
                                       created_at__gte=now - IN_PROGRESS_WINDOW)
            .order_by("-created_at", "-pk").first())


def training_run_queue(*, user=None, trigger: str = "manual") -> TrainingRun:
    """Create a queued TrainingRun and send ``retrain_model`` for it on commit.

    In demo mode (no broker, ``task_always_eager``) the task runs eagerly in
    this process when the transaction commits; a training that fails there is
    marked failed with its reason (as on a worker) and is not raised to the
    caller, so the admin page reports it instead of erroring. Read
    ``run.status`` / ``run.error`` after the call (``refresh_from_db``).
    """
    from celery import current_app

    from ..tasks import retrain_model

    run = TrainingRun.objects.create(requested_by=user, params={"trigger": trigger})

    def send() -> None:
        try:
            retrain_model.delay(run_id=run.pk, trigger=trigger)
        except Exception:
            if not current_app.conf.task_always_eager:
                raise
            logger.warning("training run %s failed in eager mode; see the run's error", run.pk)

    transaction.on_commit(send)
    return run
