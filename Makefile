# crmbridge: `make demo` and `make test` work on a fresh clone (each creates .venv if missing).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-bitrix24 demo-amocrm test test-fast bench install clean sandbox

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/crmbridge demo
	$(BIN)/crmbridge demo --crm amocrm

demo-bitrix24: $(STAMP)
	$(BIN)/crmbridge demo

demo-amocrm: $(STAMP)
	$(BIN)/crmbridge demo --crm amocrm

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# benchmarks are not run by CI; figures go into the issue notes (see bench/README.md)
bench: $(STAMP)
	$(BIN)/python bench/bench_sync.py --deals 50000
	$(BIN)/python bench/bench_evaluate.py --deals 100000
	$(BIN)/python bench/bench_enforce.py --actions 5000
	$(BIN)/python bench/bench_events.py
	$(BIN)/python bench/bench_kpi.py --deals 100000
	$(BIN)/python bench/bench_amocrm.py --deals 20000

sandbox: $(STAMP)
	$(BIN)/crmbridge sandbox

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis crmbridge-demo.db* crmbridge-amocrm-demo.db*
