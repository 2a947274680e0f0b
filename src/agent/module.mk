# The DPU's fifo keeper (src/agent/fifo-keeper.c): one small process per pod that
# holds the pod's output fifos open while no agent does, so that a process which
# exits while the agent is down keeps its last output for the next agent
# (src/agent/fifo-keeper.ts starts and drives it). C, not Node: it lives as long
# as the pod, on the DPU's one core and little memory.
AGENT_KEEPER_SRC := src/agent/fifo-keeper.c
AGENT_SAN := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all

build-c: $(BUILD)/heteropod-fifo-keeper $(BUILD)/heteropod-fifo-keeper-asan

$(BUILD)/heteropod-fifo-keeper: $(AGENT_KEEPER_SRC)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -o $@ $<

# The same under the sanitizers, for test/unit/agent-stdio.test.ts's requests.
$(BUILD)/heteropod-fifo-keeper-asan: $(AGENT_KEEPER_SRC)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) $(AGENT_SAN) -o $@ $<
