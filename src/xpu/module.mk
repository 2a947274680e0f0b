# libxpu and its C test programs. Included by the top-level Makefile.
# The rules and port ownership (pure functions, no thread or namespace).
XPU_RULES_SRC := src/xpu/rules.c src/xpu/sha256.c
XPU_SRC := src/xpu/window.c src/xpu/port.c src/xpu/diag.c src/xpu/netns.c $(XPU_RULES_SRC)
XPU_HDR := $(wildcard src/xpu/*.h)
XPU_MAP := src/xpu/libxpu.map
XPU_RING_TEST := test/unit/xpu-rings.c
XPU_WINDOW_TEST := test/unit/xpu-window.c
XPU_RULES_TEST := test/unit/xpu-rules.c
XPU_SAN := -O1 -g -fno-omit-frame-pointer

build-c: $(BUILD)/libxpu.so $(BUILD)/xpu-test-rings $(BUILD)/xpu-test-rings-asan $(BUILD)/xpu-test-rings-tsan \
	$(BUILD)/xpu-test-window $(BUILD)/xpu-test-window-asan $(BUILD)/xpu-test-rules $(BUILD)/xpu-test-rules-asan

# Exported: the xpu_* symbols of the version script; everything else hidden.
$(BUILD)/libxpu.so: $(XPU_SRC) $(XPU_HDR) $(XPU_MAP)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -fPIC -fvisibility=hidden -pthread -shared \
		-Wl,--version-script=$(XPU_MAP) -Wl,-soname,libxpu.so -Wl,-z,defs \
		-o $@ $(XPU_SRC)

$(BUILD)/xpu-test-rings: $(XPU_RING_TEST) $(XPU_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -pthread -Isrc/xpu -o $@ $<

$(BUILD)/xpu-test-rings-asan: $(XPU_RING_TEST) $(XPU_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) $(XPU_SAN) -fsanitize=address,undefined -fno-sanitize-recover=all \
		-pthread -Isrc/xpu -o $@ $<

# GCC warns that TSan does not model standalone fences; the ring's fences pair
# with seq_cst atomics that TSan does see.
$(BUILD)/xpu-test-rings-tsan: $(XPU_RING_TEST) $(XPU_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) $(XPU_SAN) -fsanitize=thread -Wno-tsan -pthread -Isrc/xpu -o $@ $<

# The window API through the public header, with the library sources compiled in.
$(BUILD)/xpu-test-window: $(XPU_WINDOW_TEST) $(XPU_SRC) $(XPU_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -pthread -Isrc/xpu -o $@ $< $(XPU_SRC)

$(BUILD)/xpu-test-window-asan: $(XPU_WINDOW_TEST) $(XPU_SRC) $(XPU_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) $(XPU_SAN) -fsanitize=address,undefined -fno-sanitize-recover=all \
		-pthread -Isrc/xpu -o $@ $< $(XPU_SRC)

# The rules and port ownership through the public header, with their sources
# compiled in (the internal SHA-256 too).
$(BUILD)/xpu-test-rules: $(XPU_RULES_TEST) $(XPU_RULES_SRC) $(XPU_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -Isrc/xpu -o $@ $< $(XPU_RULES_SRC)

$(BUILD)/xpu-test-rules-asan: $(XPU_RULES_TEST) $(XPU_RULES_SRC) $(XPU_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) $(XPU_SAN) -fsanitize=address,undefined -fno-sanitize-recover=all \
		-Isrc/xpu -o $@ $< $(XPU_RULES_SRC)

# The XPU benchmark (not a test): veth vs XPU elastic vs XPU poll. About 4 minutes.
.PHONY: bench-xpu
bench: bench-xpu
bench-xpu: build
	node dist/scripts/bench-xpu.js
