"""Default Celery beat schedule, stored with django-celery-beat so staff can edit it."""
import json

DEFAULT_SCHEDULE = [
    # (name, task, crontab kwargs or {"every": n, "period": "seconds"}, kwargs)
    ("Nightly retrain", "shop_bundles.tasks.retrain_model",
     {"minute": "0", "hour": "2", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}, {"trigger": "schedule"}),
    ("Hourly scoring", "shop_bundles.tasks.score_suggestions",
     {"minute": "15", "hour": "*", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}, {}),
    ("Hourly offer ranking per store", "shop_bundles.tasks.rank_offers_by_store",
     {"minute": "40", "hour": "*", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}, {}),
    ("Expire ended campaigns", "shop_bundles.tasks.expire_campaigns",
     {"minute": "*/10", "hour": "*", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}, {}),
    ("Relay outbox events", "shop_bundles.tasks.relay_outbox",
     {"minute": "*", "hour": "*", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}, {}),
    ("Drain impression buffer", "shop_bundles.tasks.drain_impression_buffer",
     {"every": 5, "period": "seconds"}, {}),
]

#: Messages of interval tasks expire after this many seconds, so a stopped worker does not find a backlog
#: of identical drain messages when it comes back (the next one drains everything anyway).
INTERVAL_EXPIRE_SECONDS = 30


def ensure_default_schedule(using: str = "default") -> int:
    """Create the default periodic tasks that do not exist yet.

    Returns:
        Number of PeriodicTask rows created (0 when all already exist).
    """
    from django.conf import settings
    from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

    created = 0
    for name, task, when, kwargs in DEFAULT_SCHEDULE:
        if PeriodicTask.objects.using(using).filter(name=name).exists():
            continue
        if "every" in when:
            interval, _ = IntervalSchedule.objects.using(using).get_or_create(**when)
            PeriodicTask.objects.using(using).create(name=name, task=task, interval=interval, kwargs=json.dumps(kwargs),
                                                     expire_seconds=INTERVAL_EXPIRE_SECONDS)
        else:
            schedule, _ = CrontabSchedule.objects.using(using).get_or_create(timezone=settings.TIME_ZONE, **when)
            PeriodicTask.objects.using(using).create(name=name, task=task, crontab=schedule,
                                                     kwargs=json.dumps(kwargs))
        created += 1
    return created
