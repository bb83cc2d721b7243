# The two commands of the README. Both create the virtual environment when needed.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: run test lint down status clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/pip install --disable-pip-version-check -q -e '.[embedded,test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/nexus up

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check nexus_ray tests bench
	$(BIN)/mypy

down: $(STAMP)
	$(BIN)/nexus down

status: $(STAMP)
	$(BIN)/nexus status

clean:
	rm -rf $(VENV) .nexus
