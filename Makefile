# sumflow's two entry points (see README):
#   make lab   build sumflow (with libtorch) and run the lab pipeline (hub defaults; ARGS adds
#              `--set` overrides, e.g. ARGS="--set model=DIR --set data=../shared/data/dialogsum")
#   make test  build everything from nothing (venv with torch and the Python oracles included)
#              and run every check
# Also: make lab-quick  the lab's quick variant offline, on a tiny random-init model.
.PHONY: lab lab-quick test venv build gloo

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.requirements.sha
REQS := python/requirements-test.txt
# tch finds libtorch in the venv's torch package (torch==2.11.0 from PyPI).
TORCH_ENV := VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(VENV)/bin:$$PATH LIBTORCH_USE_PYTORCH=1

lab: build
	./target/release/sumflow run pipelines/dialogsum-flan-t5.yaml $(ARGS)

DATA := ../shared/data/dialogsum
lab-quick: build
	test -f cache/models/tiny/model.safetensors || ./target/release/sumflow make-model --arch tiny \
		--tokenizer-data $(DATA) --vocab-size 4000 --out cache/models/tiny
	./target/release/sumflow run pipelines/dialogsum-flan-t5.yaml --set model=cache/models/tiny \
		--set data=$(DATA) --set subsample=100 --set max_steps=20 --set max_new_tokens=40 $(ARGS)

# Two builds: the runner without libtorch (a build with the `torch` feature links it into every
# binary of the package, though the runner never calls it), then the worker with it.
build: venv gloo
	cargo build --release --locked --bin sumflow
	$(TORCH_ENV) cargo build --release --locked --features torch --bin sumflow-worker

# gloo's headers, for the distributed shim (libtorch bundles gloo's code, not its headers).
gloo:
	test -f /usr/include/gloo/config.h || (apt-get update -qq && apt-get install -y -qq libgloo-dev >/dev/null)

# The venv: torch (libtorch for the build) and the Python reference implementations;
# rebuilt when the requirements change.
venv: $(STAMP)
$(STAMP): $(REQS)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(REQS)
	sha256sum $(REQS) > $(STAMP)

# Lints with and without libtorch (the runner must build without it), then every test, then
# the runner's own tests in the build it ships in (without libtorch: `ldd` shows none). The
# report test opens report.html in headless Chromium (Debian's `chromium`, installed if missing).
test: venv gloo
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	$(TORCH_ENV) cargo clippy --workspace --all-targets --locked --features torch -- -D warnings
	$(TORCH_ENV) cargo test --workspace --locked --features torch
	cargo test --locked --test integration workers::
