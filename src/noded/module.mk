# heteropod-noded, the node daemon in C (src/noded): its socket and pods
# (daemon.c, pod.c), on the event loop, ttrpc server and client and the agent's
# API of src/common, src/ttrpc and src/agentapi; placement from src/placement;
# the shim config read by the shim's one reader. Linked with jansson statically.
NODED_SRC = src/noded/main.c src/noded/daemon.c src/noded/pod.c src/noded/log.c src/ttrpc/server.c \
	$(AGENT_CONN_SRC) src/shim/shim-config.c $(PLACEMENT_SRC)
NODED_HDR = src/noded/noded.h src/noded/log.h src/ttrpc/server.h $(AGENT_CONN_HDR) src/shim/shim-config.h src/placement/placement.h
NODED_LIBS = -Wl,-Bstatic -ljansson -Wl,-Bdynamic -lssl -lcrypto

# The sources of other modules (read after this file) are known at the second
# expansion of the prerequisites.
.SECONDEXPANSION:
build-c: $(BUILD)/heteropod-noded $(BUILD)/heteropod-noded-asan

$(BUILD)/heteropod-noded: $$(NODED_SRC) $$(NODED_HDR) src/noded/module.mk
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -pthread -o $@ $(NODED_SRC) $(NODED_LIBS)

$(BUILD)/heteropod-noded-asan: $$(NODED_SRC) $$(NODED_HDR) src/noded/module.mk
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) $(SHIM_SAN) -pthread -o $@ $(NODED_SRC) $(NODED_LIBS)
-include src/noded/half.mk
