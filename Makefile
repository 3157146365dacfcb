# lbwnet: every target installs what it needs first, so `make train BITS=6` works on a
# fresh machine. libtorch comes from the torch==2.11.0 wheel in a cached virtualenv.
SHELL := /bin/bash
TORCH_ENV ?= $(or $(LBWNET_TORCH_ENV),$(HOME)/.cache/lbwnet/torch-2.11.0)
export LBWNET_TORCH_ENV := $(TORCH_ENV)
# torch-sys (and build.rs) find libtorch through the virtualenv's python.
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(TORCH_ENV)/bin:$(PATH)
# Build against the wheel's libtorch even if the caller's shell points elsewhere.
unexport LIBTORCH

CONFIG ?= configs/default.yaml
BITS ?= 6
C ?=
METHOD ?=
SWEEP ?= configs/sweeps/default.yaml
BIN := target/release/lbwnet

# --set overrides assembled from the make variables.
TRAIN_SETS := --set quant.bits=$(BITS) $(if $(C),--set quant.c=$(C)) $(if $(METHOD),--set quant.method=$(METHOD))

.PHONY: setup build data train eval sweep table test test-slurm bench lint clean info

# The script checks the installed versions (a fraction of a second) and installs only
# what is missing or different, e.g. onnxruntime in an environment made before it was added.
setup:
	@bash scripts/setup-libtorch.sh >/dev/null

build: setup
	cargo build --release

info: build
	$(BIN) info

data: build
	$(BIN) gen-data --config $(CONFIG)

train: build
	$(BIN) train --config $(CONFIG) $(TRAIN_SETS)

eval: build
	$(BIN) eval --config $(CONFIG) $(TRAIN_SETS)

sweep: build
	$(BIN) sweep --config $(SWEEP)

table: build
	bash scripts/reproduce-table.sh

test: setup
	cargo build --release
	cargo test --release -- --test-threads=2

# The quick sweep through a real single-node Slurm (scripts/slurm-cluster.sh brings it up,
# installing Debian's munge and slurm packages when missing; needs root or sudo).
test-slurm: setup
	cargo test --release --test sweep_slurm -- --ignored --nocapture

# Medians of repeated runs in one process, each against its own baseline.
bench: build
	cargo bench --bench lbwnet_bench
	$(BIN) bench loader --config $(CONFIG)
	$(BIN) bench train-step --config $(CONFIG) --size 240x320 --repeats 20
	$(BIN) bench train-step --config configs/voc07_resnet50.yaml --set model.backbone_weights=null \
	  --size 600x1000 --repeats 3
	$(BIN) bench train-step --config $(CONFIG) --breakdown --lr 0 --repeats 10
	# torchvision's step next to ours (small, ResNet-50 C4, VGG-16; float and 6-bit; lr 0,
	# equal RoI counts printed); `scripts/bench-vs-torchvision.sh --quick` for the small one.
	scripts/bench-vs-torchvision.sh

lint: setup
	python3 scripts/check-layers.py
	cargo fmt --all -- --check
	cargo clippy --release --all-targets -- -D warnings

clean:
	cargo clean
	rm -rf data runs results
