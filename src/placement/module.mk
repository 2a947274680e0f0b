# Placement in C (src/placement/annotations.c, placement.c; placement.h its API):
# the offload annotations and where each container runs, the port of
# src/placement/*.ts and of parsePortsAnnotation (src/netns/ports.ts) for the
# node daemon in C, with src/oci/mounts.c (isBindMount, isSandboxShm, shared
# with the daemon's shipped mounts). No binary of its own: whatever links
# PLACEMENT_SRC adds PLACEMENT_LIBS, jansson linked statically so that the
# daemon needs no runtime library for it. test/unit/placement-c.test.ts runs
# both test builds.
PLACEMENT_SRC := src/placement/annotations.c src/placement/placement.c src/oci/mounts.c
PLACEMENT_HDR := src/placement/placement.h src/placement/placement-internal.h src/oci/mounts.h
PLACEMENT_LIBS := -Wl,-Bstatic -ljansson -Wl,-Bdynamic
PLACEMENT_TEST := test/unit/placement-c.c
PLACEMENT_SAN := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all

build-c: $(BUILD)/placement-test $(BUILD)/placement-test-asan

$(BUILD)/placement-test: $(PLACEMENT_TEST) $(PLACEMENT_SRC) $(PLACEMENT_HDR) src/placement/module.mk
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -Isrc/placement -o $@ $(PLACEMENT_TEST) $(PLACEMENT_SRC) $(PLACEMENT_LIBS)

$(BUILD)/placement-test-asan: $(PLACEMENT_TEST) $(PLACEMENT_SRC) $(PLACEMENT_HDR) src/placement/module.mk
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) $(PLACEMENT_SAN) -Isrc/placement -o $@ $(PLACEMENT_TEST) $(PLACEMENT_SRC) $(PLACEMENT_LIBS)
