# drvdom build. `make test` is what CI runs (see .ci/run); `make run` is the main job.
GO        ?= go
PKGS      ?= ./...
FUZZTIME  ?= 30s
BENCHTIME ?= 1s
OUT       ?= out
IMAGE     ?= $(OUT)/drvdom.cpio.gz
XENLAB    ?= $(GO) run ./cmd/xenlab
# Backends the lab's end-to-end suite runs against: kernel, drvdom or both
# (both: one boot each, back to back, from our image; about 5 minutes each
# under TCG, and the figures side by side).
E2E_BACKEND ?= both

.PHONY: all build vet test unit e2e run bench lab-bench fuzz initramfs faults soak clean

all: build

build:
	$(GO) build $(PKGS)

vet:
	$(GO) vet $(PKGS)

# The whole test suite: vet, every unit test under the race detector (the
# simulator, layouts, protocol, fuzz seed corpora), then the lab's
# end-to-end suite on real Xen under QEMU.
test: vet unit e2e

unit:
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

# The driver domain's image: u-root init + drvdomd + the lab kernel's modules.
initramfs:
	$(XENLAB) image -o $(IMAGE)

e2e:
	$(XENLAB) e2e --backend=$(E2E_BACKEND)

# The main job: a driver domain from our image serving a guest that runs fio
# and iperf3 through drvdom's own backends; prints the results.
# RUN_BACKEND=kernel runs the kernel's backends with drvdomd as their
# script-free hotplug daemon instead.
RUN_BACKEND ?= drvdom
run: initramfs
	$(XENLAB) run --backend=$(RUN_BACKEND) --drvdom-image $(IMAGE)

# Lab scenarios beyond the e2e suite: worker kills and watchdog restarts
# (issue 6), and the 10-minute three-guest soak (issue 8).
faults:
	$(XENLAB) faults

soak:
	$(XENLAB) soak

# Every fuzz target for FUZZTIME each (go test -fuzz takes one target at a time).
fuzz:
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$t ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) $(PKGS)

lab-bench:
	$(XENLAB) bench

clean:
	$(GO) clean -testcache
	rm -rf $(OUT)
