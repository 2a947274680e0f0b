# The shim's `start` in C (src/shim/launcher.c): containerd runs it cold for every
# task, so it must not pay for a Node.js start-up.
build-c: $(BUILD)/containerd-shim-heteropod-v2

$(BUILD)/containerd-shim-heteropod-v2: src/shim/launcher.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_COMMON) -o $@ $<
