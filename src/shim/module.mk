# The shim's `start` in C (src/shim/launcher.c; launcher-bundle.c reads the runtime
# options and the bundle's annotations, launcher-util.c holds hashing, files and
# sockets): containerd runs it cold for every task, so it must not pay for a
# Node.js start-up. The same binary is the ttrpc proxy (proxy-start.c; proxy.c the
# relay, proxy-codec.c its Create rewrite and messages (the protobuf and ttrpc
# codec under them: src/proto/pb.c, src/ttrpc/frame.h), proxy-node.c an offload pod's node daemon,
# proxy-stdio.c the fifos held for the daemon's processes) that serves every pod in
# front of containerd-shim-runc-v2.
SHIM_PROXY_SRC := src/shim/proxy.c src/shim/proxy-codec.c src/shim/proxy-node.c src/shim/proxy-stdio.c src/proto/pb.c
SHIM_PROXY_HDR := src/shim/proxy.h src/shim/proxy-internal.h src/proto/pb.h src/ttrpc/frame.h
SHIM_C_SRC := src/shim/launcher.c src/shim/launcher-bundle.c src/shim/launcher-util.c src/shim/proxy-start.c $(SHIM_PROXY_SRC) src/shim/shim-config.c src/xpu/sha256.c
SHIM_C_HDR := src/shim/launcher.h $(SHIM_PROXY_HDR) src/shim/shim-config.h src/xpu/sha256.h
SHIM_PROXY_TEST := test/unit/shim-proxy.c
SHIM_CONFIG_TEST := test/unit/shim-config.c
SHIM_SAN := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all

build-c: $(BUILD)/containerd-shim-heteropod-v2 $(BUILD)/shim-test-proxy $(BUILD)/shim-test-proxy-asan $(BUILD)/shim-test-config-asan

# Linked statically: a proxy runs beside every pod, and without the dynamic
# loader and a mapped libc it is about half a MiB smaller in RSS; its text is one
# file's pages, shared by all the pods' proxies.
$(BUILD)/containerd-shim-heteropod-v2: $(SHIM_C_SRC) $(SHIM_C_HDR) src/shim/module.mk
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -static -o $@ $(SHIM_C_SRC)

# The proxy's tests: the Create rewrite, framing, malformed frames, runc's shim exiting.
$(BUILD)/shim-test-proxy: $(SHIM_PROXY_TEST) $(SHIM_PROXY_SRC) $(SHIM_PROXY_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -pthread -Isrc/shim -o $@ $(SHIM_PROXY_TEST) $(SHIM_PROXY_SRC)

$(BUILD)/shim-test-proxy-asan: $(SHIM_PROXY_TEST) $(SHIM_PROXY_SRC) $(SHIM_PROXY_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) $(SHIM_SAN) -pthread -Isrc/shim -o $@ $(SHIM_PROXY_TEST) $(SHIM_PROXY_SRC)

# The config reader alone under the sanitizers; test/unit/shim-config.test.ts runs
# its cases through it and through the shim's `config` action.
$(BUILD)/shim-test-config-asan: $(SHIM_CONFIG_TEST) src/shim/shim-config.c src/shim/shim-config.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) $(SHIM_SAN) -Isrc/shim -o $@ $(SHIM_CONFIG_TEST) src/shim/shim-config.c

# The DPU agent's API from C (src/agentapi/agent-conn.c: TLS with OpenSSL, on the
# ttrpc client of src/ttrpc/client.c and the event loop of src/common/loop.c) and
# its command heteropod-agent-call (src/shim/agent-call.c, the node's shim config
# read by the reader above); the node daemon in C (src/noded) uses the same client.
# test/unit/agent-call.test.ts runs both builds against the agent's real server.
AGENT_CONN_SRC := src/agentapi/agent-conn.c src/ttrpc/client.c src/common/loop.c src/proto/pb.c
AGENT_CONN_HDR := src/agentapi/agent-conn.h src/ttrpc/client.h src/common/loop.h src/common/grow.h src/proto/pb.h src/ttrpc/frame.h
AGENT_CALL_SRC := src/shim/agent-call.c $(AGENT_CONN_SRC) src/shim/shim-config.c
AGENT_CALL_HDR := $(AGENT_CONN_HDR) src/shim/shim-config.h

build-c: $(BUILD)/heteropod-agent-call $(BUILD)/heteropod-agent-call-asan

$(BUILD)/heteropod-agent-call: $(AGENT_CALL_SRC) $(AGENT_CALL_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -pthread -o $@ $(AGENT_CALL_SRC) -lssl -lcrypto

$(BUILD)/heteropod-agent-call-asan: $(AGENT_CALL_SRC) $(AGENT_CALL_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) $(SHIM_SAN) -pthread -o $@ $(AGENT_CALL_SRC) -lssl -lcrypto
