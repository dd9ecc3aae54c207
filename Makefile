SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

BIN      := $(CURDIR)/bin
TOOLS    := $(CURDIR)/.bin

# Pinned tool versions, installed into .bin/ by `make tools`.
BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2

# Test artifacts (the browser test's screenshot) land in test-output/_artifacts.
GO_TEST_FLAGS ?= -race -count=1 -timeout 15m -artifacts -outputdir $(CURDIR)/test-output

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

.PHONY: build
build: ## Build every binary into bin/
	@mkdir -p $(BIN)
	@[[ -x $(BIN)/api ]] || echo "building the services into bin/ (a first build downloads the Go modules and compiles everything: about 2 minutes; later builds take seconds)…"
	go build -o $(BIN)/api ./services/api
	go build -o $(BIN)/logger ./services/logger
	go build -o $(BIN)/edge ./services/edge
	go build -o $(BIN)/notification ./services/notification
	go build -ldflags "-X main.commit=$$(git rev-parse --short HEAD 2>/dev/null) -X main.buildVersion=$$(git describe --tags --always --dirty 2>/dev/null)" \
		-o $(BIN)/eventbus ./cmd/eventbus

.PHONY: test
test: build js-test examples push-decrypt ## Run the whole test suite against a real redis-server (or the embedded fallback)
	@mkdir -p test-output
	@report=$$(mktemp); trap 'rm -f "$$report"' EXIT; \
	status=0; EVENTBUS_BIN=$(BIN) EVENTBUS_SKIP_REPORT="$$report" go test $(GO_TEST_FLAGS) work || status=$$?; \
	if [[ -s $$report ]]; then echo; echo "Skipped for want of a real redis-server:"; cat "$$report"; fi; \
	exit $$status

# The JavaScript client: TypeScript in clients/js, built with the pinned
# compiler of its package-lock.json. Its build is committed where the edge
# embeds it (/eventbus.js), so building Go needs no Node.
JS        := clients/js
JS_STATIC := services/edge/internal/web/static/eventbus.js
# MQTT.js's browser build (MIT), pinned by clients/js's package-lock.json,
# for the demo page's MQTT tab.
MQTT_STATIC := services/edge/internal/web/static/mqtt.js

.PHONY: js
js: ## Build the JavaScript client and copy it to where the edge serves it
	@if ! command -v npm >/dev/null; then \
		if [[ "$${EVENTBUS_REQUIRE_NODE:-}" == 1 ]]; then echo "EVENTBUS_REQUIRE_NODE=1 but npm is not on PATH"; exit 1; fi; \
		echo "npm is not on PATH: the JavaScript client is not rebuilt (the committed build stays)"; exit 0; fi; \
	cd $(JS) && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build && cp dist/eventbus.js $(CURDIR)/$(JS_STATIC) && \
		cp node_modules/mqtt/dist/mqtt.esm.js $(CURDIR)/$(MQTT_STATIC)

.PHONY: js-test
js-test: js ## Run the JavaScript client's unit tests (node --test)
	@if ! command -v node >/dev/null; then \
		if [[ "$${EVENTBUS_REQUIRE_NODE:-}" == 1 ]]; then echo "EVENTBUS_REQUIRE_NODE=1 but node is not on PATH"; exit 1; fi; \
		echo "node is not on PATH: the JavaScript client's tests are skipped"; exit 0; fi; \
	cd $(JS) && node --test test/

# Consumers of the Redis wire in Node and Python (examples/, run by the
# e2e tests). The code they generate from proto/ is committed, so running
# them needs neither buf nor protoc. The pinned buf drives both generators:
# the protoc-gen-es of the Node example's package-lock.json, and the Python
# generator built into Debian 12's protoc, whose version is that of Debian's
# python3-protobuf runtime.
NODE_EXAMPLE   := examples/node
PYTHON_EXAMPLE := examples/python
PROTOC_VERSION := libprotoc 3.21.12

.PHONY: examples
examples: ## Install the Node consumer's packages (npm ci)
	@if ! command -v npm >/dev/null; then \
		if [[ "$${EVENTBUS_REQUIRE_NODE:-}" == 1 ]]; then echo "EVENTBUS_REQUIRE_NODE=1 but npm is not on PATH"; exit 1; fi; \
		echo "npm is not on PATH: the Node consumer's test is skipped"; exit 0; fi; \
	cd $(NODE_EXAMPLE) && npm ci --no-audit --no-fund --loglevel=error

# The notification tests decrypt the Web Push messages they receive with
# Mozilla's http_ece (RFC 8291), pinned by this folder's package-lock.json.
PUSH_DECRYPT := services/notification/testdata/pushdecrypt

.PHONY: push-decrypt
push-decrypt: ## Install the Node package the Web Push tests decrypt with (npm ci)
	@if ! command -v npm >/dev/null; then \
		if [[ "$${EVENTBUS_REQUIRE_NODE:-}" == 1 ]]; then echo "EVENTBUS_REQUIRE_NODE=1 but npm is not on PATH"; exit 1; fi; \
		echo "npm is not on PATH: the Web Push decryption tests are skipped"; exit 0; fi; \
	cd $(PUSH_DECRYPT) && npm ci --no-audit --no-fund --loglevel=error

.PHONY: examples-generate
examples-generate: tools examples ## Generate the Node and Python consumers' code from proto/
	@if command -v npm >/dev/null; then cd $(NODE_EXAMPLE) && rm -rf gen && $(TOOLS)/buf generate; \
	else echo "npm is not on PATH: $(NODE_EXAMPLE)/gen is not regenerated"; fi
	@if [[ "$$(protoc --version 2>/dev/null)" != "$(PROTOC_VERSION)" ]]; then \
		if [[ "$${EVENTBUS_REQUIRE_PYTHON:-}" == 1 ]]; then echo "EVENTBUS_REQUIRE_PYTHON=1 but protoc is not $(PROTOC_VERSION) (Debian 12: apt-get install protobuf-compiler)"; exit 1; fi; \
		echo "protoc is not $(PROTOC_VERSION): $(PYTHON_EXAMPLE)/gen is not regenerated"; exit 0; fi; \
	cd $(PYTHON_EXAMPLE) && rm -rf gen && $(TOOLS)/buf generate

.PHONY: run
run: build ## Start Redis and every service on localhost; Ctrl-C stops all
	./scripts/run.sh

# The benchmarks run against their own system: quiet logger, a known token
# secret, and the edge's send queue and rate limits as in production.
BENCH_ENV := LOGGER_STDOUT=false LOG_LEVEL=warn EDGE_DEMO=false EDGE_JWT_SECRET=bench-secret-0123456789abcdef EDGE_RECOVER_MAX=100000

.PHONY: bench
bench: build ## Start the system and run the standard benchmark scenarios
	$(BENCH_ENV) ./scripts/run.sh ./scripts/bench.sh

.PHONY: bench-smoke
bench-smoke: build ## Run every benchmark scenario for a moment, to prove each works
	$(BENCH_ENV) BENCH_SMOKE=1 API_HTTP_ADDR=:18080 API_GRPC_ADDR=:19090 EDGE_HTTP_ADDR=:18081 EDGE_MQTT_ADDR=:18883 \
		LOGGER_HTTP_ADDR=:18082 NOTIFICATION_HTTP_ADDR=:18083 LOGGER_DIR=$$(mktemp -d) ./scripts/run.sh ./scripts/bench.sh

.PHONY: tools
tools: $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc ## Install the pinned code generators into .bin/

$(TOOLS)/buf:
	GOBIN=$(TOOLS) GOWORK=off go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) GOWORK=off go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) GOWORK=off go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

.PHONY: generate
generate: tools ## Generate Go code from proto/ into proto/gen
	cd proto && $(TOOLS)/buf lint && rm -rf gen && $(TOOLS)/buf generate

.PHONY: generate-check
generate-check: generate js examples-generate ## Fail when the committed proto/gen, the examples' gen/ or the edge's eventbus.js is stale
	@git diff --exit-code -- $(JS_STATIC) $(MQTT_STATIC) || { echo "$(JS_STATIC) or $(MQTT_STATIC) is stale: run make js and commit"; exit 1; }
	@for g in $(NODE_EXAMPLE)/gen $(PYTHON_EXAMPLE)/gen; do \
		git diff --exit-code -- $$g || { echo "$$g is stale: run make examples-generate and commit"; exit 1; }; \
		test -z "$$(git status --porcelain -- $$g)" || { git status --porcelain -- $$g; echo "$$g has files not committed: run make examples-generate and commit"; exit 1; }; \
	done
	@git diff --exit-code -- proto/gen || { echo "proto/gen is stale: run make generate and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- proto/gen)" || { git status --porcelain -- proto/gen; echo "proto/gen has files not committed: run make generate and commit"; exit 1; }

.PHONY: lint
lint: tools ## go vet, gofmt and buf lint
	go vet work
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^proto/gen/')); test -z "$$out" || { echo "gofmt would change:"; echo "$$out"; exit 1; }
	cd proto && $(TOOLS)/buf lint

.PHONY: fuzz
fuzz: ## Run every fuzz target (each func Fuzz… of every *_test.go, found afresh) for FUZZTIME (default 20s) each
	grep -rl --include='*_test.go' '^func Fuzz' pkg services cmd e2e | sort | while read -r f; do \
		for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$$f"); do \
			echo "== $$t ./$$(dirname "$$f")"; \
			go test -run='^$$' -fuzz="^$$t\$$" -fuzztime=$${FUZZTIME:-20s} "./$$(dirname "$$f")"; \
		done; \
	done

.PHONY: tidy
tidy: ## go mod tidy in every module
	for m in proto pkg services/api services/logger services/edge services/notification cmd/eventbus deploy e2e; do (cd $$m && GOWORK=off go mod tidy); done

.PHONY: clean
clean: ## Remove bin/, data/ and test-output/
	rm -rf $(BIN) data test-output
