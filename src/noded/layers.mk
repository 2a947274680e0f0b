# A container's rootfs layers for the node daemon (src/noded/layers.c; layers.h
# its API): overlayLowerdirs and layerDigest's index lookup of
# src/shim/layers.ts. Included by src/noded/module.mk. The daemon links
# LAYERS_SRC and LAYERS_LIBS, and xpu_sha256 from src/xpu/sha256.c, which it
# has with libxpu's sources (XPU_SRC); the tests add that file themselves.
# test/unit/noded-layers.test.ts runs both test builds, and compares their
# lookup, identity and lowerdirs modes with the TS.
LAYERS_SRC := src/noded/layers.c
LAYERS_HDR := src/noded/layers.h src/xpu/sha256.h
LAYERS_LIBS := -Wl,-Bstatic -ljansson -Wl,-Bdynamic
LAYERS_TEST := test/unit/noded-layers.c
LAYERS_TEST_SRC := $(LAYERS_TEST) $(LAYERS_SRC) src/xpu/sha256.c
LAYERS_SAN := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all

build-c: $(BUILD)/noded-test-layers $(BUILD)/noded-test-layers-asan

$(BUILD)/noded-test-layers: $(LAYERS_TEST_SRC) $(LAYERS_HDR) src/noded/layers.mk
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -Isrc/noded -o $@ $(LAYERS_TEST_SRC) $(LAYERS_LIBS)

$(BUILD)/noded-test-layers-asan: $(LAYERS_TEST_SRC) $(LAYERS_HDR) src/noded/layers.mk
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) $(LAYERS_SAN) -Isrc/noded -o $@ $(LAYERS_TEST_SRC) $(LAYERS_LIBS)
