# shop_bundles — common tasks.  `make demo` and `make test` are all a new user needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
HOST   ?= 127.0.0.1
PORT   ?= 8000
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/shop_bundles

.PHONY: venv demo demo-data serve test test-fast faults migrate worker worker-ml beat bench clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed

migrate: venv
	$(PY) manage.py migrate --noinput

# Full demo on the real Complete Journey data: import, train, score, approve 20, serve.
demo: venv
	DJANGO_DEBUG=1 $(PY) manage.py migrate --noinput
	DJANGO_DEBUG=1 $(PY) manage.py demo --url http://$(HOST):$(PORT)
	DJANGO_DEBUG=1 $(PY) manage.py runserver $(HOST):$(PORT)

# The same steps without serving (used by benchmarks and CI-like checks).
demo-data: venv
	DJANGO_DEBUG=1 $(PY) manage.py migrate --noinput
	DJANGO_DEBUG=1 $(PY) manage.py demo --url http://$(HOST):$(PORT)

serve: venv
	DJANGO_DEBUG=1 $(PY) manage.py runserver $(HOST):$(PORT)

# Tests need PostgreSQL (and Redis for the Celery worker test); see README.
test: venv
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} $(PY) -m pytest -q

test-fast: venv
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} $(PY) -m pytest -q -m "not slow"

faults: venv
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} $(PY) -m pytest -q -m faults

worker: venv
	$(VENV)/bin/celery -A config worker -Q default -n default@%h -l info

worker-ml: venv
	$(VENV)/bin/celery -A config worker -Q ml -n ml@%h -c 1 --max-tasks-per-child 1 -l info

beat: venv
	$(VENV)/bin/celery -A config beat -l info

bench: venv
	$(PY) benchmarks/train_full.py

clean:
	rm -rf var/ .pytest_cache
