# Benchmarks (see docs/benchmarks.md). Both use this folder's .venv and its local Kafka +
# PostgreSQL, set up as ./sendout sets them up (deploy/local/stack.py, .sendout/stack.env).
.PHONY: bench bench-quick stack faults faults-ci

BENCH_ARGS ?=
PY := .venv/bin/python

$(PY): requirements.lock pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q -r requirements.lock
	.venv/bin/pip install -q --no-deps -e .
	touch $(PY)

stack: $(PY)
	python3 deploy/local/stack.py start

# 1,000,000 recipients end to end (no-op provider) next to a bare aiokafka pipe.
bench: stack
	set -a && . .sendout/stack.env && set +a && $(PY) -m bench.pipeline --recipients 1000000 $(BENCH_ARGS)

# The same with 100,000 recipients (about a minute).
bench-quick: stack
	set -a && . .sendout/stack.env && set +a && $(PY) -m bench.pipeline --recipients 100000 $(BENCH_ARGS)

# The fault suite (docs/reliability.md): every case on 50,000-recipient campaigns, or 5,000 for
# CI; FAULTS_ARGS e.g. `--case kill-dispatcher --case restart-kafka`.
FAULTS_ARGS ?=

faults: stack
	set -a && . .sendout/stack.env && set +a && $(PY) -m bench.faults --recipients 50000 $(FAULTS_ARGS)

faults-ci: stack
	set -a && . .sendout/stack.env && set +a && $(PY) -m bench.faults --recipients 5000 --outage-seconds 15 $(FAULTS_ARGS)
