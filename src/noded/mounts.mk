# An offloaded container's shipped mounts for the node daemon (src/noded/mounts.c,
# fingerprint.c, mount-watch.c; mounts.h its API): mountedFiles, sourceFingerprint,
# writeTerminationMessage and MountWatch of src/shim/mounted-files.ts and
# mount-watch.ts. Included by src/noded/module.mk. The daemon links MOUNTS_SRC
# and MOUNTS_LIBS; isBindMount and the rest of src/oci/mounts.c it has with
# PLACEMENT_SRC, and xpu_sha256 (src/xpu/sha256.c) with libxpu's sources: the
# tests add both files themselves. test/unit/noded-mounts.test.ts runs both
# test builds, and compares their fingerprint and files modes with the TS.
MOUNTS_SRC := src/noded/mounts.c src/noded/fingerprint.c src/noded/mount-watch.c
MOUNTS_HDR := src/noded/mounts.h src/noded/mounts-internal.h src/noded/log.h src/oci/mounts.h src/proto/pbuf.h src/proto/pb.h src/xpu/sha256.h
MOUNTS_LIBS := -pthread -Wl,-Bstatic -ljansson -Wl,-Bdynamic
MOUNTS_TEST := test/unit/noded-mounts.c
MOUNTS_TEST_SRC := $(MOUNTS_TEST) $(MOUNTS_SRC) src/noded/log.c src/oci/mounts.c src/xpu/sha256.c src/proto/pb.c
MOUNTS_SAN := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all

build-c: $(BUILD)/noded-test-mounts $(BUILD)/noded-test-mounts-asan

$(BUILD)/noded-test-mounts: $(MOUNTS_TEST_SRC) $(MOUNTS_HDR) src/noded/mounts.mk
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -Isrc/noded -o $@ $(MOUNTS_TEST_SRC) $(MOUNTS_LIBS)

$(BUILD)/noded-test-mounts-asan: $(MOUNTS_TEST_SRC) $(MOUNTS_HDR) src/noded/mounts.mk
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) $(MOUNTS_SAN) -Isrc/noded -o $@ $(MOUNTS_TEST_SRC) $(MOUNTS_LIBS)
