# pneumo-edge: every target installs what it needs into .venv first.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DATA    ?= ../shared/data/chest_xray
BUNDLE  ?= export
RUN     ?= runs/default

.PHONY: install demo test test-fast docs bench reproduce guard-report readme seeds study heatmap-study heatmap-sheet clean

$(BIN)/pneumo-edge: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[train,test,eval,serve,cluster,node,browser,docs]"
	@touch $@

install: $(BIN)/pneumo-edge

# The main job: classify the committed X-rays with the shipped bundle (no training),
# then evaluate the shipped model on the test split when the dataset is present.
demo: install
	$(BIN)/pneumo-edge infer examples/xrays --out demo_out/predictions.csv --force --verbose
	@if [ -d "$(DATA)" ]; then \
	  $(BIN)/pneumo-edge evaluate $(BUNDLE) --data $(DATA) --out demo_out/eval --force \
	    --ledger demo_out/test_ledger.jsonl --note "make demo"; \
	else echo "no dataset at $(DATA): skipping the test-split evaluation"; fi

test: install
	$(BIN)/python -m pytest -q

# The inner loop: everything but what starts a server, a browser, a venv or Ray (marked slow).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# The documentation site, every link checked (build/site/).
docs: install
	$(BIN)/mkdocs build --strict

bench: install
	$(BIN)/pneumo-edge bench variants --bundle $(BUNDLE) --data $(DATA)
	$(BIN)/pneumo-edge bench memory
	$(BIN)/pneumo-edge bench engines --images $(DATA)/test
	$(BIN)/pneumo-edge bench pipeline --images $(DATA)/test
	$(BIN)/pneumo-edge bench browser --images $(DATA)/test --force
	$(BIN)/pneumo-edge bench heatmaps --bundle $(BUNDLE) --images examples/xrays
	$(BIN)/pneumo-edge bench node --images $(DATA)/train
	$(BIN)/pneumo-edge bench node --images $(DATA)/train --senders 2
	$(BIN)/pneumo-edge bench node-bounds
	$(BIN)/pneumo-edge bench adapt ../shared/data/site_nih --data $(DATA) --fine-tune --force

guard-report: install
	$(BIN)/pneumo-edge bundle guard-report --model $(BUNDLE)/model.onnx --data $(DATA) --out $(BUNDLE)/guard.json --force
	$(BIN)/pneumo-edge bundle guard-report --model $(BUNDLE)/model.int8.onnx --data $(DATA) --out $(BUNDLE)/guard.int8.json --force

# Retrain and re-export the shipped bundle from the dataset (about 15 minutes of training on 2 cores).
reproduce: install
	@start=$$(date +%s); \
	$(BIN)/pneumo-edge train --data $(DATA) --out $(RUN) --force && \
	$(BIN)/pneumo-edge evaluate $(RUN) --data $(DATA) --out $(RUN)/eval --force --note "make reproduce" && \
	$(BIN)/pneumo-edge bundle build $(RUN) --results $(RUN)/eval --data $(DATA) --out $(BUNDLE) --force && \
	echo "reproduce took $$(( $$(date +%s) - start )) s"

readme: install
	$(BIN)/pneumo-edge bundle readme README.md --bundle $(BUNDLE)

clean:
	rm -rf $(VENV) demo_out .pytest_cache

# Two more seeds of the default recipe, evaluated once each, summarised beside the default run.
seeds: install
	for s in 43 44; do \
	  $(BIN)/pneumo-edge train --data $(DATA) --out runs/seed$$s --seed $$s --force && \
	  $(BIN)/pneumo-edge evaluate runs/seed$$s --data $(DATA) --out runs/seed$$s/eval --force --note "seed $$s"; \
	done
	$(BIN)/pneumo-edge study seeds $(RUN)/eval runs/seed43/eval runs/seed44/eval --out $(BUNDLE)/seeds.json --force

# The recipe study: train every declared candidate, score it on perturbed validation, pick by the committed rule.
study: install
	$(BIN)/pneumo-edge study recipes bench/study/recipes.json

# The heat-map study: every candidate method scored on validation films by bench/heatmaps/protocol.json.
heatmap-study: install
	$(BIN)/pneumo-edge study heatmaps --bundle $(BUNDLE) --data $(DATA) --out bench/heatmaps --force

# The model card's contact sheet: the shipped heat map on six committed demo films (never test films).
heatmap-sheet: install
	$(BIN)/pneumo-edge explain $(wordlist 1,3,$(sort $(wildcard examples/xrays/NORMAL/*.jpeg))) \
	  $(wordlist 1,3,$(sort $(wildcard examples/xrays/PNEUMONIA/*.jpeg))) --model $(BUNDLE)/model.int8.onnx --out $(BUNDLE)/heatmaps --force
