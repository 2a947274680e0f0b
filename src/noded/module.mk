# heteropod-noded, the node daemon in C (src/noded): its socket and pods
# (daemon.c, pod.c), a pod's DPU half and split network (dpu.c; the host half
# half.c), stdio relays (relay.c), events to containerd (events.c), layers
# (layers.c), mounts (mounts.c, fingerprint.c, mount-watch.c; driven by watch.c), on the event loop, ttrpc server and client and the agent's API of
# src/common, src/ttrpc and src/agentapi; placement from src/placement; libxpu's
# sources compiled in; the shim config read by the shim's one reader. jansson is
# linked statically.
NODED_SRC = src/noded/main.c src/noded/daemon.c src/noded/pod.c src/noded/dpu.c src/noded/relay.c src/noded/events.c \
	src/noded/log.c src/noded/watch.c src/noded/mgmt.c $(HALF_SRC) $(LAYERS_SRC) $(MOUNTS_SRC) src/ttrpc/server.c \
	$(AGENT_CONN_SRC) src/shim/shim-config.c src/shim/proxy-codec.c $(PLACEMENT_SRC) $(XPU_SRC)
NODED_HDR = $(wildcard src/noded/*.h) src/ttrpc/server.h $(AGENT_CONN_HDR) src/shim/shim-config.h src/shim/proxy.h \
	src/placement/placement.h $(XPU_HDR) src/proto/pbuf.h
NODED_LIBS = -Wl,-Bstatic -ljansson -Wl,-Bdynamic -lssl -lcrypto

.SECONDEXPANSION:
build-c: $(BUILD)/heteropod-noded $(BUILD)/heteropod-noded-asan

$(BUILD)/heteropod-noded: $$(NODED_SRC) $$(NODED_HDR) src/noded/module.mk
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -pthread -o $@ $(NODED_SRC) $(NODED_LIBS)

$(BUILD)/heteropod-noded-asan: $$(NODED_SRC) $$(NODED_HDR) src/noded/module.mk
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) $(SHIM_SAN) -pthread -o $@ $(NODED_SRC) $(NODED_LIBS)
-include src/noded/half.mk src/noded/layers.mk src/noded/mounts.mk
