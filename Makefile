# samrt: `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.samrt-installed
LS_VENV ?= .venv-label-studio
LS_STATUS := $(VENV)/.label-studio-install.status
# torch 2.14.1 + torchvision 0.29.1: the pair segment-anything's torchvision import works with here.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-quick test-release perf-analyzer clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@# Debian packages the tests use: chromium (samrt annotate's browser test), nginx (the replica routing test)
	@(test -x /usr/bin/chromium && command -v nginx >/dev/null) || (apt-get update -q && \
		apt-get install -y -q chromium chromium-driver nginx) || echo "could not install chromium/nginx with apt: \
		the browser test of samrt annotate and the NGINX routing test will skip, saying so"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# Label Studio (the real server of the label-studio test) needs numpy 2 and Django 5: its own venv (~4 min,
	@# 1 GB), installed in the background while the main venv installs (log: $(LS_VENV).log)
	@# The job writes its exit status to $(LS_STATUS) when it ends (a PID can be a zombie or reused).
	@rm -f $(LS_STATUS)
	@test -x $(LS_VENV)/bin/label-studio && echo 0 > $(LS_STATUS) || { ( ($(PYTHON) -m venv $(LS_VENV) && \
		$(LS_VENV)/bin/python -m pip install -q --disable-pip-version-check "label-studio==1.23.2") \
		> $(LS_VENV).log 2>&1; echo $$? > $(LS_STATUS) ) & }
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH) "numpy<2"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	@# ultralytics (tests only) declares opencv-python, the GUI build of the cv2 the dev extra has headless: two cv2
	@# distributions overwrite each other's files, so it goes in without dependencies (the ones it needs are in dev)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps "ultralytics==8.4.190"
	@test -f $(LS_STATUS) || echo "waiting for the Label Studio install ($(LS_VENV).log)"
	@n=0; while ! test -f $(LS_STATUS) && [ $$n -lt 1800 ]; do sleep 2; n=$$((n + 2)); done; rm -f $(LS_STATUS)
	@test -x $(LS_VENV)/bin/label-studio || echo "could not install Label Studio into $(LS_VENV) (see \
		$(LS_VENV).log): the real Label Studio test will skip, saying so"
	@touch $@

demo: install
	$(VENV)/bin/samrt demo --out build/demo

# The suite (what .ci/run calls): all but the tests marked `release`.
test: install
	$(PY) -m pytest -q -m "not release" tests

# Everything, release tests included: vit_b parity at every image size, the INT8 gate's full
# accuracy-control loop, test_server.py re-run on an OpenVINO fp32 server.
test-release: install
	$(PY) -m pytest -q tests

# The developers' loop: every test that starts no server and is not marked slow (a few minutes).
test-quick: install
	$(PY) -m pytest -q -m "not triton and not slow and not release" tests

# Triton's perf_analyzer (for `samrt bench serve`): the binary ships in the tritonclient[all] 2.51.0
# wheel (the server's version), kept in its own venv; it links libb64 (Debian) and libcudart 12.
perf-analyzer:
	@dpkg -s libb64-0d >/dev/null 2>&1 || apt-get install -y -q libb64-0d || sudo apt-get install -y -q libb64-0d
	@test -x .venv-perf/bin/python || $(PYTHON) -m venv .venv-perf
	.venv-perf/bin/pip install -q --disable-pip-version-check "tritonclient[all]==2.51.0" nvidia-cuda-runtime-cu12
	LD_LIBRARY_PATH=$$(ls -d $$PWD/.venv-perf/lib/python3*/site-packages/nvidia/cuda_runtime/lib) .venv-perf/bin/perf_analyzer --version

clean:
	rm -rf build .pytest_cache
