# drvdom build. `make test` is what CI runs (see .ci/run).
GO        ?= go
PKGS      ?= ./...
FUZZTIME  ?= 30s
BENCHTIME ?= 1s

.PHONY: all build vet test unit race fuzz bench clean

all: build

build:
	$(GO) build $(PKGS)

vet:
	$(GO) vet $(PKGS)

# Unit tests (simulator, layouts, protocol) under the race detector, plus a
# short pass over every fuzz corpus (go test runs the seed corpora as tests).
test: vet
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

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

clean:
	$(GO) clean -testcache
