# One command to set up and run the default sweep, one to set up and run the tests.
#   make run                     # creates .venv if needed, then runs search_spaces/quickstart.yaml
#   make run ARGS="--data-root /data --set train.epochs=10"
#   make test                    # creates .venv if needed, then ruff + the test suite
#   make test-all                # ... plus the long end-to-end runs (tests marked `long`)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
ARGS ?=

.PHONY: setup run test test-all bench browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m sweep.launch $(ARGS)

test: $(STAMP) browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q $(ARGS)

# The suite plus the long end-to-end runs (tests marked `long`), the autoscaler on a fake cluster and ray up over
# SSH on loopback (it skips itself without root, sshd, rsync or tmux).
test-all: $(STAMP) browser
	$(VENV)/bin/ruff check .
	MEDPEFT_LONG_TESTS=1 MEDPEFT_AUTOSCALER_TEST=1 MEDPEFT_RAY_UP_TEST=1 $(PY) -m pytest -q $(ARGS)

# The HTML report is checked in headless Chromium (Debian's package). Installed when missing and we may (root
# with apt); otherwise that one test skips itself.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } \
		|| echo "note: chromium is not installed; the HTML screenshot test will be skipped"

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) results .pytest_cache
