"""Celery application for the host project.

Configuration is read from Django settings under the ``CELERY_`` namespace
(see ``config/settings.py``). With no ``CELERY_BROKER_URL`` set, tasks run
eagerly in the calling process (demo mode); with ``redis://...`` real workers
consume them.

TensorFlow is never imported here: ML code paths import it lazily inside the
task body, so beat and the web process stay light and prefork children never
inherit a loaded model.
"""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("shop_bundles")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
