# husk: `make demo` and `make test` work on a fresh Debian 12 machine as root.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

INIT_TARGET := x86_64-unknown-linux-musl
TESTHOST    := $(CURDIR)/tests/testhost/run
export HUSK_INIT := $(CURDIR)/target/$(INIT_TARGET)/release/husk-init

.PHONY: all deps kernel build demo test unit lint e2e soak fuzz bench-deps bench bench-boot bench-run bench-net bench-storage bench-fs-channel bench-image bench-density bench-breakdown bench-pause bench-checkpoint bench-pod bench-podman-net bench-plot clean

all: build

## Debian packages and the Rust musl target (idempotent).
deps:
	scripts/install-deps.sh

## The guest kernel, cached outside the checkout (kernels/build.sh).
kernel: deps
	kernels/build.sh >/dev/null

## husk (host) and husk-init (static guest init).
build: deps
	cargo build --release --bin husk
	cargo build --release -p husk-init --target $(INIT_TARGET)

## Boot a microVM and run a command in it (through the KVM test host when
## this machine has no vmx/svm).
demo: kernel build
	HUSK_TESTHOST_CPUS=$${HUSK_TESTHOST_CPUS:-1} HUSK_TESTHOST_TCG_THREAD=$${HUSK_TESTHOST_TCG_THREAD:-single} \
		$(TESTHOST) -- scripts/demo.sh

## The whole suite: lints, unit tests, end-to-end tests in real guests.
test: kernel build lint unit e2e

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --release -- -D warnings
	cargo clippy --release --features fuzzing --lib -- -D warnings

unit:
	cargo test --release --workspace --lib --bins

## End-to-end suites (tests/e2e_*.rs) boot real guests: each test binary runs
## inside the KVM test host, used as cargo's runner (retried once only when
## the test host itself failed, never for a failing test). The L1 gets one vCPU
## under single-threaded TCG: nested SVM under multi-threaded TCG sometimes
## hangs or resets L2 guests when several run at once (seen in 2 of ~40 runs);
## one vCPU runs the suites as fast on 2 host cores and none failed so.
## The output is kept in target/e2e.log; on failure scripts/e2e-summary
## repeats what failed at the end (a CI log may show only its last lines).
e2e: kernel build
	mkdir -p target
	rc=0; HUSK_TESTHOST_CPUS=$${HUSK_TESTHOST_CPUS:-1} HUSK_TESTHOST_TCG_THREAD=$${HUSK_TESTHOST_TCG_THREAD:-single} \
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$(CURDIR)/tests/testhost/cargo-runner" \
		cargo test --release --no-fail-fast --test 'e2e_*' 2>&1 | tee target/e2e.log || rc=$$?; \
	if [ "$$rc" -ne 0 ]; then scripts/e2e-summary target/e2e.log; fi; exit "$$rc"

## The long load run of tests/e2e_load.rs (docs/reliability.md): CONTAINERS
## at once (default 50) and CYCLES sequential create/start/delete cycles
## (default 1000), figures on stderr (lines starting `load:`); a few hours
## at most under TCG, hence the longer test-host timeout.
soak: kernel build
	HUSK_LOAD_CONTAINERS=$${CONTAINERS:-50} HUSK_SOAK_CYCLES=$${CYCLES:-1000} \
	HUSK_TESTHOST_CPUS=$${HUSK_TESTHOST_CPUS:-1} HUSK_TESTHOST_TCG_THREAD=$${HUSK_TESTHOST_TCG_THREAD:-single} \
	HUSK_TESTHOST_TIMEOUT=$${HUSK_TESTHOST_TIMEOUT:-14400} \
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$(CURDIR)/tests/testhost/cargo-runner" \
		cargo test --release --test e2e_load -- --nocapture --test-threads 1

## Benchmarks (results go to docs/benchmarks.md by hand, with the machine named).
## Raw results: benches/results/*.json (shared read-write with the test host);
## the start-up chart: docs/img/startup.png. RUNS=N runs each; bench-density:
## COUNT=N containers per runtime (16: about 0.5 GiB of husk guests, well inside
## the test host's default 4096 MiB, HUSK_TESTHOST_MEM=MiB for more), JOBS=N
## creates at once, UNTIL_FULL=1 to start containers until no more fit,
## COLD=1 to cold-boot husk's guests (default: restore the template VM's
## snapshot; bench-run and bench-breakdown measure both modes).
BENCH_OUT   := $(CURDIR)/benches/results
# Debian's interpreter: python3-matplotlib is installed for it.
PLOT_PYTHON ?= /usr/bin/python3

bench: bench-boot bench-run bench-breakdown bench-net bench-storage bench-fs-channel bench-image bench-density bench-pause bench-checkpoint bench-pod bench-podman-net bench-plot

bench-boot: kernel build
	mkdir -p $(BENCH_OUT)
	$(TESTHOST) --rw $(BENCH_OUT) -- python3 benches/boot.py --runs $${RUNS:-10} --json $(BENCH_OUT)/boot.json

bench-run: kernel build
	mkdir -p $(BENCH_OUT)
	$(TESTHOST) --rw $(BENCH_OUT) -- python3 benches/run.py --runs $${RUNS:-10} --json $(BENCH_OUT)/run.json

bench-breakdown: kernel build
	mkdir -p $(BENCH_OUT)
	$(TESTHOST) --rw $(BENCH_OUT) -- python3 benches/breakdown.py --runs $${RUNS:-10} --json $(BENCH_OUT)/breakdown.json

bench-net: kernel build
	$(TESTHOST) -- python3 benches/net.py --runs $${RUNS:-3}

## Fuzz every target for FUZZ_SECONDS (default 60) each (docs/security.md).
fuzz:
	scripts/fuzz.sh

## The benchmarks' extra tools (virtiofsd from crates.io for bench-storage).
bench-deps:
	scripts/install-bench-deps.sh

bench-storage: kernel build bench-deps
	mkdir -p $(BENCH_OUT)
	$(TESTHOST) --rw $(BENCH_OUT) -- python3 benches/storage.py --qemu --runs $${RUNS:-3} --json $(BENCH_OUT)/storage.json

## A FUSE request's cost between the fs device and its server process, no VM
## (benches/fs_channel.rs; on the machine itself, not in the test host).
bench-fs-channel:
	mkdir -p $(BENCH_OUT)
	cargo bench --features fuzzing --bench fs_channel -- --rounds $${RUNS:-5} --json $(BENCH_OUT)/fs_channel.json

bench-image: kernel build
	mkdir -p $(BENCH_OUT)
	$(TESTHOST) --rw $(BENCH_OUT) -- python3 benches/image.py --runs $${RUNS:-5} --json $(BENCH_OUT)/image.json

bench-pause: kernel build
	mkdir -p $(BENCH_OUT)
	$(TESTHOST) --rw $(BENCH_OUT) -- python3 benches/pause.py --runs $${RUNS:-10} --json $(BENCH_OUT)/pause.json

bench-checkpoint: kernel build
	mkdir -p $(BENCH_OUT)
	$(TESTHOST) --rw $(BENCH_OUT) -- python3 benches/checkpoint.py --runs $${RUNS:-5} --json $(BENCH_OUT)/checkpoint.json

bench-pod: kernel build
	mkdir -p $(BENCH_OUT)
	exe=$$(cargo bench --bench pod --no-run --message-format=json 2>/dev/null | \
		python3 -c 'import json,sys; [print(m["executable"]) for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "pod"]'); \
	$(TESTHOST) --rw $(BENCH_OUT) -- "$$exe" --runs $${RUNS:-5} --pods $${PODS:-4} --json $(BENCH_OUT)/pod.json

bench-podman-net: kernel build
	$(TESTHOST) -- env RUNS=$${RUNS:-5} benches/podman_net.sh

bench-density: kernel build
	mkdir -p $(BENCH_OUT)
	$(TESTHOST) --rw $(BENCH_OUT) -- python3 benches/density.py --count $${COUNT:-16} --jobs $${JOBS:-4} \
		$${UNTIL_FULL:+--until-full} $${COLD:+--cold} --json $(BENCH_OUT)/density.json

## The chart of bench-boot's and bench-run's latest results.
bench-plot:
	$(PLOT_PYTHON) benches/plot.py --boot $(BENCH_OUT)/boot.json --run $(BENCH_OUT)/run.json

clean:
	cargo clean
