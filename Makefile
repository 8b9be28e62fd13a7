# Two entry points for a fresh machine:
#   make demo   create the environment and run the main job on the bundled samples
#   make test   install what the tests need (Python deps with the dataflow extra, skopeo, umoci,
#               docker-registry) and run them all
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := skopeo umoci docker-registry

.PHONY: demo test deps test-deps clean

$(BIN)/imagepush: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dataflow]'
	touch $@

deps: $(BIN)/imagepush

test-deps: deps
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: deps
	rm -rf demo-out
	$(BIN)/python -m imagepush.pipeline.samples demo-out/sample demo-out/legacy
	$(BIN)/imagepush run configs/demo.yaml
	$(BIN)/imagepush audit demo-out/audit.parquet

test: test-deps
	$(BIN)/pytest -q -ra

clean:
	rm -rf demo-out imagepush-audit .pytest_cache
