# dlfusion: every target creates .venv and installs what it needs by itself.
# `make sim BIN=model.dlfb [INPUT=x.npy] [OUTPUT=y.npy] [HW=config.toml] [WAVES=1]` runs a binary on the RTL
# (INPUT: the model's float input, or NAME=FILE.npy, several separated by spaces; OUTPUT: FILE.npy, FILE.npz or DIR).
PYTHON ?= python3
VENV   := .venv
VBIN   := $(VENV)/bin
STAMP  := $(VENV)/.installed
HW     ?=
BIN    ?=
WAVES  ?=
OUT    ?= build/accel.v

HW_ARG := $(if $(HW),--hw $(HW),)

.PHONY: install test demo bench verilog sim lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VBIN)/pip install --quiet --upgrade pip
	$(VBIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VBIN)/python -m pytest -q tests

demo: $(STAMP)
	$(VBIN)/dlfusion demo $(HW_ARG)

# Foundation, scaling, zoo and sparsity benchmarks, then the full-grid characterization
# (the decision rule of the HwConfig), the tuning benchmark over the zoo, and the
# simulator's speed against the bare MAC array.
bench: $(STAMP)
	$(VBIN)/dlfusion bench foundation $(HW_ARG)
	$(VBIN)/dlfusion bench scaling $(HW_ARG)
	$(VBIN)/dlfusion bench zoo $(HW_ARG)
	$(VBIN)/dlfusion bench sparse $(HW_ARG)
	$(VBIN)/dlfusion characterize --grid full $(HW_ARG)
	$(VBIN)/dlfusion bench tune $(HW_ARG)
	$(VBIN)/dlfusion bench simspeed $(HW_ARG)

verilog: $(STAMP)
	$(VBIN)/dlfusion verilog $(HW_ARG) -o $(OUT)

sim: $(STAMP)
	@test -n "$(BIN)" || { echo "usage: make sim BIN=model.dlfb [INPUT=x.npy] [OUTPUT=y.npy] [HW=config.toml] [WAVES=1]" >&2; exit 2; }
	$(VBIN)/dlfusion run $(BIN) --backend rtl $(HW_ARG) $(foreach input,$(INPUT),--input $(input)) \
		$(if $(OUTPUT),--output $(OUTPUT),) $(if $(WAVES),--waves,) --json

lint: $(STAMP)
	$(VBIN)/ruff check hw sim compiler dlfusion tests
	$(VBIN)/dlfusion verilog $(HW_ARG) -o build/lint/accel.v
	$(VBIN)/dlfusion lint build/lint/accel.v

clean:
	rm -rf build .pytest_cache
