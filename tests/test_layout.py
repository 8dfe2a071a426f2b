"""The deployment shape: compose file, process isolation from TensorFlow, production settings."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=300)


def test_docker_compose_defines_the_whole_stack():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "web", "worker", "worker-ml", "beat", "migrate"} <= set(services)
    assert "-Q ml" in services["worker-ml"]["command"] and "--max-tasks-per-child 1" in services["worker-ml"]["command"]
    assert services["beat"]["command"].startswith("celery -A config beat")
    env = services["web"]["environment"]
    assert env["DATABASE_URL"].startswith("postgres://") and env["CELERY_BROKER_URL"].startswith("redis://")
    assert env["DJANGO_ENV"] == "production"
    assert services["web"]["ports"] == ["8000:8000"]
    assert {"SHOP_BUNDLES_EVENT_TOKEN", "DJANGO_TIME_ZONE"} <= set(env)
    # Two workers on one host need their own node names (Celery warns of a duplicate celery@host otherwise).
    assert "-n default@%h" in services["worker"]["command"] and "-n ml@%h" in services["worker-ml"]["command"]


def test_the_image_leaves_out_the_venv_and_the_demo_files_and_does_not_run_as_root():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "var"} <= ignored  # var/ holds the SQLite file, models and demo passwords
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in dockerfile if line.startswith("USER ")]
    assert users and users[-1] != "root"


def test_bundling_ml_never_imports_django():
    result = _run("import sys, bundling_ml, bundling_ml.pipeline, bundling_ml.cli; "
                  "print(sorted(m for m in sys.modules if m == 'django' or m.startswith('django.')))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.faults
def test_web_process_and_beat_do_not_load_tensorflow():
    code = (
        "import os, sys, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings'); django.setup();"
        "from django.urls import reverse; from django.test import Client;"
        "import config.wsgi, config.celery, shop_bundles.tasks, shop_bundles.admin, shop_bundles.ml_bridge;"
        "import shop_bundles.services.training, shop_bundles.services.scoring;"
        "from django_celery_beat.schedulers import DatabaseScheduler;"
        "r = Client().get('/admin/login/'); assert r.status_code == 200, r.status_code;"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    result = _run(code, DATABASE_URL=os.environ["DATABASE_URL"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "False False"


@pytest.mark.faults
def test_production_refuses_to_start_without_secret_key():
    result = _run("import django, os; os.environ['DJANGO_SETTINGS_MODULE']='config.settings'; django.setup()",
                  DJANGO_ENV="production", DJANGO_ALLOWED_HOSTS="shop.example.com")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


@pytest.mark.faults
def test_manage_py_reports_a_settings_error_in_one_line_without_a_traceback():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(DJANGO_ENV="production", DJANGO_ALLOWED_HOSTS="shop.example.com")
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert (result.returncode, result.stderr) == (
        2, "manage.py: the settings are not usable: DJANGO_SECRET_KEY must be set when DJANGO_ENV=production.\n")


@pytest.mark.faults
def test_unknown_environment_and_debug_in_production_are_refused():
    typo = _run("import django, os; os.environ['DJANGO_SETTINGS_MODULE']='config.settings'; django.setup()",
                DJANGO_ENV="prod")
    assert typo.returncode != 0 and "DJANGO_ENV must be 'development' or 'production'" in typo.stderr
    debug = _run("import django, os; os.environ['DJANGO_SETTINGS_MODULE']='config.settings'; django.setup()",
                 DJANGO_ENV="production", DJANGO_SECRET_KEY="s" * 60, DJANGO_ALLOWED_HOSTS="shop.example.com",
                 DJANGO_DEBUG="1")
    assert debug.returncode != 0 and "DJANGO_DEBUG must be off" in debug.stderr


@pytest.mark.faults
def test_deploy_check_is_clean_with_production_settings():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(DJANGO_ENV="production", DJANGO_SECRET_KEY="x" * 20 + "-production-secret-" + "Yz9!kQ" * 8,
               DJANGO_ALLOWED_HOSTS="shop.example.com", DATABASE_URL=os.environ["DATABASE_URL"],
               CELERY_BROKER_URL="redis://127.0.0.1:6379/15")
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.faults
@pytest.mark.parametrize("unset, message", [
    ("CELERY_BROKER_URL", "CELERY_BROKER_URL must be set when DJANGO_ENV=production (without it tasks run in the "
                          "web process, the demo's mode), e.g. redis://redis:6379/0."),
    ("DATABASE_URL", "DATABASE_URL must be set when DJANGO_ENV=production (without it the settings fall back to the "
                     "demo's SQLite file), e.g. postgres://shop:secret@db:5432/shop_bundles."),
])
def test_production_refuses_the_demo_fallbacks_for_the_broker_and_the_database(unset, message):
    """QA: production settings without a broker passed ``check --deploy``; "Retrain now" then trained TensorFlow
    eagerly inside a gunicorn request, which timed out (500, run failed). Without DATABASE_URL it was SQLite."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(DJANGO_ENV="production", DJANGO_SECRET_KEY="x" * 20 + "-production-secret-" + "Yz9!kQ" * 8,
               DJANGO_ALLOWED_HOSTS="shop.example.com", DATABASE_URL=os.environ["DATABASE_URL"],
               CELERY_BROKER_URL="redis://127.0.0.1:6379/15")
    env.pop(unset)
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stderr) == (2, f"manage.py: the settings are not usable: {message}\n")


@pytest.mark.faults
def test_debug_is_off_by_default():
    result = _run("import os; os.environ['DJANGO_SETTINGS_MODULE']='config.settings';"
                  "from django.conf import settings; print(settings.DEBUG)")
    assert result.stdout.strip() == "False", result.stderr


def test_the_field_cases_copied_into_tests_match_the_shared_ones():
    """``tests/cases`` holds the team's field cases so any clone runs them; when the shared
    workspace's ``../shared/cases`` sits beside the repository, every input there is copied byte for byte."""
    ours = ROOT / "tests" / "cases"
    expected = {"import/retail_export_messy.csv", "import/dates_day_first.csv", "import/bad_rows.csv"}
    assert expected <= {str(p.relative_to(ours)) for p in ours.rglob("*.csv")}
    shared = ROOT.parent / "shared" / "cases"
    if not shared.is_dir():
        pytest.skip("no ../shared/cases beside this clone; the copy in tests/cases is used")
    for src in shared.rglob("*.csv"):
        rel = src.relative_to(shared)
        assert (ours / rel).read_bytes() == src.read_bytes(), f"tests/cases/{rel} differs from ../shared/cases/{rel}"
