# l7probe: `make run` installs what is missing and starts the probe on this host;
# `make test` runs the whole test suite; `make bench` prints the performance figures.
PY        ?= /usr/bin/python3
VENV      := .venv
VPY       := $(VENV)/bin/python
PREFIX    ?= /opt/gala-gopher
DESTDIR   ?=
ARGS      ?=
PYTEST_ARGS ?=

.PHONY: all deps venv run test bench fuzz install uninstall clean

all: venv

deps:
	@sh scripts/setup-host.sh

$(VENV)/.stamp: requirements.txt
	$(PY) -m venv --system-site-packages $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements.txt
	@touch $@

venv: deps $(VENV)/.stamp

run: venv
	$(VPY) ./l7probe.py $(ARGS)

test: venv
	$(VPY) -m pytest -q -ra $(PYTEST_ARGS) tests

bench: venv
	$(VPY) bench/run.py

# Coverage-guided fuzzing of every parser through the stream/stitch path (tests/fuzz/);
# FUZZ_SECONDS per parser (FUZZ_RUNS: stop a parser after that many executions); non-zero
# exit on a finding.
FUZZ_SECONDS ?= 120
FUZZ_RUNS    ?=
fuzz: venv
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_RUNS=$(FUZZ_RUNS) $(VPY) tests/fuzz/run.py

# Installs the probe where gala-gopher looks for it: the executable as
# $(PREFIX)/extend_probes/l7probe (a Python script that finds its libraries in
# l7probe.d/ beside it) and the meta file as $(PREFIX)/meta/l7probe.meta.
# Only what the probe imports at run time goes into its venv (versions pinned in
# requirements.txt); tests/test_install.py checks that nothing it imports is missing.
SRC_DIRS := bpf include ipc pipeline protocol
RUNTIME_REQS := pyelftools psutil capstone hpack pymongo dnspython cramjam
install: deps
	install -d $(DESTDIR)$(PREFIX)/extend_probes/l7probe.d $(DESTDIR)$(PREFIX)/meta
	cp -r $(SRC_DIRS) $(DESTDIR)$(PREFIX)/extend_probes/l7probe.d/
	find $(DESTDIR)$(PREFIX)/extend_probes/l7probe.d -name __pycache__ -prune -exec rm -rf {} +
	for p in $(RUNTIME_REQS); do grep -i "^$$p==" requirements.txt || \
	    { echo "install: $$p is not pinned in requirements.txt" >&2; exit 1; }; \
	done > $(DESTDIR)$(PREFIX)/extend_probes/l7probe.d/requirements.txt
	install -m 0644 l7probe.meta $(DESTDIR)$(PREFIX)/extend_probes/l7probe.d/l7probe.meta
	install -m 0644 l7probe.meta $(DESTDIR)$(PREFIX)/meta/l7probe.meta
	install -m 0755 l7probe.py $(DESTDIR)$(PREFIX)/extend_probes/l7probe
	rm -rf $(DESTDIR)$(PREFIX)/extend_probes/l7probe.d/.venv
	$(PY) -m venv --system-site-packages $(DESTDIR)$(PREFIX)/extend_probes/l7probe.d/.venv
	$(DESTDIR)$(PREFIX)/extend_probes/l7probe.d/.venv/bin/python -m pip install -q \
	    --disable-pip-version-check -r $(DESTDIR)$(PREFIX)/extend_probes/l7probe.d/requirements.txt

uninstall:
	rm -rf $(DESTDIR)$(PREFIX)/extend_probes/l7probe $(DESTDIR)$(PREFIX)/extend_probes/l7probe.d \
	    $(DESTDIR)$(PREFIX)/meta/l7probe.meta

clean:
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
