# The host half of a pod's split network namespace in C (src/noded/half.c,
# half.h its API), for the node daemon: linked into it from NODED_SRC by
# module.mk. Its test (test/unit/noded-half.c, run as root by
# test/unit/noded-half.test.ts) is built with libxpu's sources, plain and
# with ASan+UBSan. Included from src/noded/module.mk, after .SECONDEXPANSION:
# libxpu's variables are set by a module.mk read later.
HALF_SRC := src/noded/half.c
HALF_HDR := src/noded/half.h
HALF_TEST := test/unit/noded-half.c
HALF_SAN := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all

build-c: $(BUILD)/noded-test-half $(BUILD)/noded-test-half-asan

$(BUILD)/noded-test-half: $(HALF_TEST) $(HALF_SRC) $(HALF_HDR) $$(XPU_SRC) $$(XPU_HDR) src/noded/half.mk
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -pthread -Isrc/noded -Isrc/xpu -o $@ $(HALF_TEST) $(HALF_SRC) $(XPU_SRC)

$(BUILD)/noded-test-half-asan: $(HALF_TEST) $(HALF_SRC) $(HALF_HDR) $$(XPU_SRC) $$(XPU_HDR) src/noded/half.mk
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) $(HALF_SAN) -pthread -Isrc/noded -Isrc/xpu -o $@ $(HALF_TEST) $(HALF_SRC) $(XPU_SRC)
