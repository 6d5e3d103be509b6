# Two commands set everything up on a fresh machine (each creates .venv on first use):
#   make serve   install the serving extra (no torch) and serve the embedded default model
#   make test    install everything (CPU torch via constraints/cpu.txt) and run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := constraints/cpu.txt
PYTEST_ARGS ?=

.PHONY: serve test test-slow lint format clean default-model puzzle-model

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[serve]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[all,test,sweep]"
	touch $@ $(VENV)/.serve-installed

serve: $(VENV)/.serve-installed
	$(BIN)/mfql-serve $(SERVE_ARGS)

test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/pytest $(PYTEST_ARGS)

test-slow: $(VENV)/.dev-installed
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.dev-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Rebuild the embedded default model from scratch (docs/results/default-model.md).
# About 30 min of data generation (skipped when the file exists) and about 110 min of training
# (170609 steps on one core, as the recorded run), plus its evaluations, on 2 CPU cores.
DATA_DIR ?= data
DEFAULT_RUN ?= runs/default-cube-single
default-model: $(VENV)/.dev-installed
	test -f $(DATA_DIR)/cube-single-play-v0.npz || $(BIN)/mfql-data generate --env cube-single-v0 --type play \
		--episodes 1000 --seed 0 --workers 2 --out $(DATA_DIR)/cube-single-play-v0.npz
	$(BIN)/mfql-train --env cube-single-play-singletask-task2-v0 --dataset-dir $(DATA_DIR) --out $(DEFAULT_RUN) \
		--agent fql --policy mlp --mlp-hidden 256,256,256,256 --critic-hidden 256,256,256,256 --steps 200000 \
		--stop-after 170609 --seed 0 --hyperparameters reference --eval-every 20000 --eval-episodes 25 --threads 1 \
		--precision bf16 --compile off --overwrite
	$(BIN)/mfql-eval $(DEFAULT_RUN) --episodes 50 > $(DEFAULT_RUN)/eval-50.json
	$(BIN)/mfql-export $(DEFAULT_RUN) --out server/default_model/cube-single/1 --name cube-single \
		--format onnx --evaluation $(DEFAULT_RUN)/eval-50.json --overwrite

# Rebuild the embedded MFQL puzzle model from scratch (docs/results/default-model.md#the-puzzle-model).
# About 40 min of data generation (skipped when the file exists) and about 95 min of training
# (30000 compiled fp32 steps on one core, as the recorded run), plus its evaluations, on 2 CPU cores.
PUZZLE_RUN ?= runs/puzzle-3x3-task1
puzzle-model: $(VENV)/.dev-installed
	test -f $(DATA_DIR)/puzzle-3x3-play-v0.npz || $(BIN)/mfql-data generate --env puzzle-3x3-v0 --type play \
		--episodes 1000 --seed 0 --workers 2 --out $(DATA_DIR)/puzzle-3x3-play-v0.npz
	$(BIN)/mfql-train --env puzzle-3x3-play-singletask-task1-v0 --dataset-dir $(DATA_DIR) --out $(PUZZLE_RUN) \
		--agent mfql --policy mlp --mlp-hidden 256,256,256,256 --critic-hidden 256,256,256,256 --steps 30000 \
		--seed 0 --hyperparameters reference --actor-lr-schedule constant --actor-lr 3e-4 --alpha 1000 \
		--eval-every 10000 --eval-episodes 25 --checkpoint-every 5000 --threads 1 --precision fp32 --compile on \
		--overwrite
	$(BIN)/mfql-eval $(PUZZLE_RUN) --episodes 50 --seed 1000000 > $(PUZZLE_RUN)/eval-50.json
	$(BIN)/mfql-export $(PUZZLE_RUN) --out server/default_model/puzzle-3x3-task1/1 --name puzzle-3x3-task1 \
		--format onnx --evaluation $(PUZZLE_RUN)/eval-50.json --overwrite
