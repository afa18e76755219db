# portsleuth: `make run` builds and starts watching, `make test` runs every test.
# Both need root (BPF, network namespaces); `make deps` installs the toolchain.

GO        ?= go
CLANG     ?= clang-19
BIN       := bin/portsleuth
ARGS      ?= watch
APT_PKGS  := clang-19 llvm-19 bpftool libbpf-dev iproute2 nginx socat python3 prometheus chromium

export PATH := $(PATH):/usr/local/go/bin

.PHONY: all build run test bench vmtest generate check-generate vet fmt-check check deps clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/portsleuth

# The main job: live failures on this host. `make run ARGS="report --duration 30s"` for a report.
run: build
	./$(BIN) $(ARGS)

# Every test on the backend auto picks, then the probe and integration tests
# again on each of EXTRA_BACKENDS that works here (doctor says which): the
# host can load the tracepoint and cgroup backends; make vmtest covers the
# kernel-function ones.
EXTRA_BACKENDS ?= cgroup
test: build
	@if [ "$$(id -u)" = 0 ]; then \
		echo "$(GO) test -count=1 ./..."; $(GO) test -count=1 ./... || exit 1; \
	else \
		log=$$(mktemp) || exit 1; \
		$(GO) test -count=1 -v ./... >"$$log" 2>&1; rc=$$?; \
		if [ $$rc = 0 ]; then grep -E '^(ok|FAIL|\?) ' "$$log"; else cat "$$log"; fi; \
		awk '/^--- PASS/ { p++ } /^--- FAIL/ { f++ } /^--- SKIP/ { s++; if (prev ~ /root/) r++ } { prev = $$0 } \
			END { printf "non-root: %d of %d tests skipped (%d of them need root: run make test as root), %d passed, %d failed\n", s, s + p + f, r, p, f }' "$$log"; \
		rm -f "$$log"; exit $$rc; \
	fi
	@for b in $(EXTRA_BACKENDS); do \
		if [ "$$(id -u)" != 0 ]; then echo "skipping the $$b backend pass: needs root"; continue; fi; \
		verdict=$$(./$(BIN) doctor 2>&1 | grep "^backend $$b:"); \
		case "$$verdict" in *works*) ;; *) echo "skipping the $$b backend pass: $$verdict"; continue ;; esac; \
		echo "PORTSLEUTH_TEST_BACKEND=$$b go test ./internal/probe ./internal/cli"; \
		PORTSLEUTH_TEST_BACKEND=$$b $(GO) test -count=1 ./internal/probe ./internal/cli || exit 1; \
	done

# What portsleuth costs here, one table (root). Numbers only: nothing asserts on time.
bench:
	$(GO) run ./cmd/portsleuth-bench $(BENCH_ARGS)

# The kernel-function backends (fentry, kprobe) and the cgroup backend on Debian's
# 6.1 and 6.12 kernels under qemu: the host kernel may not load the first two.
# Kernels pinned with their SHA256 in .ci/vmtest/kernels; VMTEST_JOBS VMs at once
# (default: one per CPU). Prints each backend's BPF time in the VMs, then a
# kernel x backend matrix.
vmtest:
	bash .ci/vmtest/run

# Regenerate gen/ from bpf/ (needs clang-19 and libbpf-dev: `make deps`).
generate:
	cd gen && $(GO) generate ./...

# CI: the committed gen/ must be what bpf/ compiles to. The Go files must
# match byte for byte; an object must match in code and types (.ci/bpf-canon),
# since clang orders part of its BTF by where the tree sits. A rebuilt object
# that means the same is put back as committed.
check-generate:
	@tmp=$$(mktemp -d); cp gen/*.o "$$tmp"/; \
	$(MAKE) -s generate; \
	for o in gen/*.o; do \
		old="$$tmp/$${o##*/}"; \
		if [ "$$(.ci/bpf-canon "$$o")" = "$$(.ci/bpf-canon "$$old")" ]; then cp "$$old" "$$o"; fi; \
	done; \
	rm -rf "$$tmp"; \
	git diff --exit-code --stat -- gen/ || { echo "gen/ is stale: run 'make generate' and commit it"; exit 1; }

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/')); \
	if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi

check: fmt-check vet check-generate

# Installs what a fresh Debian bookworm machine lacks (as root).
deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		for svc in nginx prometheus; do case " $$missing " in *" $$svc "*) \
			echo "stopping the $$svc service the package may have started (the tests run their own)"; \
			systemctl disable --now $$svc >/dev/null 2>&1 || service $$svc stop >/dev/null 2>&1 || true ;; \
		esac; done; \
	fi

clean:
	rm -rf bin
