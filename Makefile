# sumflow's two entry points (see README):
#   make lab   build sumflow and run the lab pipeline
#   make test  build everything from nothing (Python oracle venv included) and run every check
.PHONY: lab test venv build

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.requirements.sha
REQS := python/requirements-test.txt

lab: build
	./target/release/sumflow run pipelines/lab-results.yaml

build:
	cargo build --release --locked

# The venv with the Python reference implementations the parity tests compare against;
# rebuilt when the requirements change.
venv: $(STAMP)
$(STAMP): $(REQS)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(REQS)
	sha256sum $(REQS) > $(STAMP)

test: venv
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	SUMFLOW_PYTHON=$(CURDIR)/$(VENV)/bin/python cargo test --workspace --locked
