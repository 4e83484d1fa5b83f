# Entry points; each installs what is missing first (system packages, the ONNX Runtime library).
.PHONY: deps test-deps run test test-accelerators lint deb

deps:
	deploy/install-deps.sh
	deploy/fetch-onnxruntime.sh

test-deps:
	deploy/install-deps.sh --test
	deploy/fetch-onnxruntime.sh
	ORT_VERSION=1.22.0 deploy/fetch-onnxruntime.sh .ort/old  # a runtime too old, which must be refused
	tests/dataset/python-env.sh  # Hugging Face datasets, which loads the dataset exports in the tests

# The daemon on its embedded defaults (LOOKOUT_CONFIG or ARGS="--config FILE" to change that); its first
# start fetches the default model from the Hugging Face Hub when models/ has none. It loads the CUDA build
# of the runtime when `deploy/fetch-onnxruntime.sh --gpu` installed one (ORT_DYLIB_PATH names another).
RUNTIME := $(or $(ORT_DYLIB_PATH),$(wildcard $(CURDIR)/.ort/gpu/lib/libonnxruntime.so),$(CURDIR)/.ort/lib/libonnxruntime.so)
run: deps
	ORT_DYLIB_PATH=$(RUNTIME) cargo run --release -- run $(ARGS)

# Every test: unit tests and integration tests against real brokers and servers on loopback. Most
# integration tests wait on brokers, servers and timers, so six run at a time where libtest would run
# one a core: on two cores the suite took 99 s instead of 167, about what its CPU time allows.
test: test-deps
	RUST_TEST_THREADS=6 cargo test --all-targets

# The accelerator runtimes (about 2.5 GB: the CUDA build with NVIDIA's CUDA and cuDNN libraries, and
# OpenVINO's plugin provider) and the tests that need them; they need no GPU or NPU, and check what a box
# without one does. Kept out of `make test` for the size of the download.
test-accelerators: test-deps
	deploy/fetch-onnxruntime.sh --gpu --openvino .ort/accelerators
	cargo test --test integration accelerator_ -- --ignored

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

# The Debian package (target/debian/lookout_*.deb), laid out like deploy/install.sh.
deb: deps
	cargo build --release
	command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
	cargo deb --no-build
