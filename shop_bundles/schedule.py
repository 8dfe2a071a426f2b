"""Default Celery beat schedule, stored with django-celery-beat so staff can edit it."""
import json

DEFAULT_SCHEDULE = [
    # (name, task, crontab kwargs, kwargs)
    ("Nightly retrain", "shop_bundles.tasks.retrain_model",
     {"minute": "0", "hour": "2", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}, {"trigger": "schedule"}),
    ("Hourly scoring", "shop_bundles.tasks.score_suggestions",
     {"minute": "15", "hour": "*", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}, {}),
    ("Expire ended campaigns", "shop_bundles.tasks.expire_campaigns",
     {"minute": "*/10", "hour": "*", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}, {}),
    ("Relay outbox events", "shop_bundles.tasks.relay_outbox",
     {"minute": "*", "hour": "*", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}, {}),
]


def ensure_default_schedule(using: str = "default") -> int:
    """Create the default periodic tasks that do not exist yet.

    Returns:
        Number of PeriodicTask rows created (0 when all already exist).
    """
    from django.conf import settings
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    created = 0
    for name, task, cron, kwargs in DEFAULT_SCHEDULE:
        if PeriodicTask.objects.using(using).filter(name=name).exists():
            continue
        schedule, _ = CrontabSchedule.objects.using(using).get_or_create(timezone=settings.TIME_ZONE, **cron)
        PeriodicTask.objects.using(using).create(name=name, task=task, crontab=schedule, kwargs=json.dumps(kwargs))
        created += 1
    return created
