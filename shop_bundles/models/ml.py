"""Training runs and the model versions they produce."""
from django.conf import settings
from django.db import models
from django.utils import timezone


class ModelVersion(models.Model):
    """A trained model: its artifact on disk, its data window and its backtest table.

    ``artifact_path`` is a directory holding ``model.keras`` and
    ``metadata.json`` (see ``bundling_ml.artifacts``). ``metrics`` is the
    backtest table: ``{"split_date": ..., "rows": [{"system": ..., "hr@10": ...,
    "ndcg@10": ..., "queries": ..., "seconds": ...}, ...]}``. At most one
    version is active (partial unique constraint).
    """

    label = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    artifact_path = models.CharField(max_length=500)
    data_start = models.DateTimeField(null=True, blank=True)
    data_end = models.DateTimeField(null=True, blank=True)
    split_date = models.DateField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    is_active = models.BooleanField(default=False)
    activated_at = models.DateTimeField(null=True, blank=True)
    notes = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["is_active"], condition=models.Q(is_active=True),
                                    name="one_active_model_version"),
        ]

    def __str__(self):
        return self.label


class TrainingRun(models.Model):
    """One retrain attempt, with progress the admin shows while it runs.

    ``progress`` is a fraction in [0, 1]; ``stage`` names the current step.
    ``slot`` identifies the schedule slot (e.g. ``nightly:2026-11-30``) so a
    redelivered message for the same slot does not train twice.
    ``history`` holds the Keras training curve ``{"loss": [...], "val_loss": [...]}``.
    """

    QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
    STATUS_CHOICES = [(QUEUED, "Queued"), (RUNNING, "Running"), (SUCCEEDED, "Succeeded"), (FAILED, "Failed")]

    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default=QUEUED, db_index=True)
    slot = models.CharField(max_length=100, null=True, blank=True, unique=True)
    progress = models.FloatField(default=0.0)
    stage = models.CharField(max_length=100, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    data_start = models.DateTimeField(null=True, blank=True)
    data_end = models.DateTimeField(null=True, blank=True)
    split_date = models.DateField(null=True, blank=True)
    params = models.JSONField(default=dict, blank=True)
    history = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    model_version = models.OneToOneField(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL,
                                         related_name="training_run")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"Training run {self.pk} ({self.status})"
