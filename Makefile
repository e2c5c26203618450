# trakscope: `make demo` runs the whole pipeline on the built-in data, `make test` runs the tests.
# Both create .venv on first use. PyTorch is pinned so pip takes the wheels this machine already has.
# The demo is sized to stay under 10 minutes, installation included, on a CPU twice as slow as the one the
# README's timing comes from (2 models x 6 epochs, 2-fold cross-validation for cleanlab, 1 removal seed).
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
RUN     ?= runs/demo
TORCH    = torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test lint clean-demo

$(BIN)/trakscope: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

install: $(BIN)/trakscope

demo: install
	$(BIN)/trakscope run --out $(RUN) --noise 0.1 --ensemble 2 --epochs 6
	$(BIN)/trakscope inspect --run $(RUN) --target 17 --top 8
	$(BIN)/trakscope detect --run $(RUN) --folds 2
	$(BIN)/trakscope removal --run $(RUN) --fractions 0.05 --seeds 1 --strategies positive,negative,random
	$(BIN)/trakscope report --run $(RUN)

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks

clean-demo:
	rm -rf $(RUN)
