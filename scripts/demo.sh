#!/usr/bin/env bash
# make demo: the local test bed (private containerd, CNI, the emulated DPU) and a
# demo pod whose proxy and metrics agent run on the DPU while its app runs on the
# host, all one network identity. The pod is left running to explore with crictl.
#
# HETEROPOD_DEMO_POD=NAME names the pod (namespace default; default: demo): a
# second demo pod can run beside a first, which is left alone. Running the script
# again with the same name replaces that pod, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
hp="$repo/bin/heteropod"
export CONTAINER_RUNTIME_ENDPOINT=unix:///run/heteropod/containerd.sock
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# An HTTP GET from the node into the pod network (the test bed's bridge, 10.233.77.0/24),
# and one from outside the node: the fabric, a namespace behind the DPU's uplink.
get_js='require("http").get(process.argv[1], { timeout: 3000 }, (r) => { if (r.statusCode !== 200) process.exit(1); r.pipe(process.stdout); }).on("error", () => process.exit(1)).on("timeout", () => process.exit(1))'
fetch() { node -e "$get_js" "$1"; }
fetch_from_fabric() { ip netns exec hp-fabric node -e "$get_js" "$1"; }

name=${HETEROPOD_DEMO_POD:-demo}
if ! [[ $name =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]]; then
  echo "demo: HETEROPOD_DEMO_POD=\"$name\" is not a pod name (lowercase letters, digits and -, at most 63)" >&2
  exit 2
fi

say "bringing up the local test bed: private containerd, CNI, local images, the emulated DPU"
"$hp" local up

if existing=$("$hp" cri pods --name "$name" -q) && [ -n "$existing" ]; then
  say "removing the previous demo pod $name"
  "$hp" cri stopp $existing >/dev/null && "$hp" cri rmp $existing >/dev/null
fi

say "running the demo pod: app on the host; proxy (haproxy) and metrics (node-exporter) offloaded"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The proxy's config volume names its file by absolute path.
sed "s|@DEMO_DIR@|$repo/scripts/demo|" scripts/demo/proxy.yaml >"$work/proxy.yaml"
# The pod's name, uid, hostname and log directory carry its name.
sed -e "s|^  name: demo\$|  name: $name|" -e "s|^  uid: heteropod-demo\$|  uid: heteropod-$name|" \
  -e "s|^hostname: demo\$|hostname: $name|" -e "s|/pod-logs/demo\$|/pod-logs/$name|" scripts/demo/pod.yaml >"$work/pod.yaml"
pod=$("$hp" cri runp --runtime heteropod "$work/pod.yaml")
for c in scripts/demo/app.yaml "$work/proxy.yaml" scripts/demo/metrics.yaml; do
  id=$("$hp" cri create "$pod" "$c" "$work/pod.yaml")
  "$hp" cri start "$id" >/dev/null
done
ip=$("$hp" cri inspectp "$pod" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).status.network.ip))')
app=$("$hp" cri ps -p "$pod" --name '^app$' -q)
proxy=$("$hp" cri ps -p "$pod" --name '^proxy$' -q)
metrics=$("$hp" cri ps -p "$pod" --name '^metrics$' -q)

say "where each container runs"
"$hp" pods
echo
echo "proxy's cgroup, read in the container: $("$hp" cri exec "$proxy" cat /proc/self/cgroup | grep -m1 memory)"
echo "app's cgroup, read in the container:   $("$hp" cri exec "$app" cat /proc/self/cgroup | grep -m1 memory)"

say "fetching the page through the proxy: http://$ip:15006/ (node -> pod IP -> proxy on the DPU -> app on the host)"
page=""
for _ in $(seq 100); do
  if page=$(fetch "http://$ip:15006/" 2>/dev/null); then break; fi
  sleep 0.1
done
echo "${page:-no answer through the proxy}"
[ -n "$page" ] || { echo "demo: the proxy did not answer; see: $hp cri logs $proxy" >&2; exit 1; }

say "fetching it from outside the node: the fabric -> DPU uplink -> proxy on the DPU (the host sees none of it) -> app on the host"
fetch_from_fabric "http://$ip:15006/" || { echo "demo: the fabric did not reach the proxy" >&2; exit 1; }

say "the metrics agent on the DPU: http://$ip:9100/metrics"
for _ in $(seq 100); do
  if metrics_text=$(fetch "http://$ip:9100/metrics" 2>/dev/null); then break; fi
  sleep 0.1
done
grep -E '^(node_load1|node_memory_MemTotal_bytes|node_boot_time_seconds) ' <<<"${metrics_text:-}" || echo "no answer from node-exporter"

say "load from outside the node: wrk in the fabric (hp-fabric, 10.233.100.1), 2 connections, 3 seconds"
echo "the fabric reaches the node only through the DPU's uplink p0; the DPU delivers podIP:15006 to the proxy itself"
# Packets through a device, both directions: the host's end of its PF link, the DPU's uplink.
packets() { ip netns exec "$1" sh -c "echo \$((\$(cat /sys/class/net/$2/statistics/rx_packets) + \$(cat /sys/class/net/$2/statistics/tx_packets)))"; }
pf0=$(packets hp-dpu pf0hpf); up0=$(packets hp-dpu p0)
ip netns exec hp-fabric wrk -t1 -c2 -d3s "http://$ip:15006/" | sed -n '1,/Transfer/p'
pf1=$(packets hp-dpu pf0hpf); up1=$(packets hp-dpu p0)
echo
echo "packets during the load, from the interface counters:"
echo "  DPU uplink p0 (fabric <-> DPU):        $((up1 - up0))"
echo "  host PF (pf0hpf <-> hp-pf0, the host): $((pf1 - pf0))   <- the proxy's client traffic never crossed the host"
echo
echo "proxy's request log (what crictl logs shows, written on the DPU):"
"$hp" cri logs --tail 3 "$proxy"

say "the pod's XPU link (shared-memory rings between the host half and the DPU half)"
"$hp" xpu stats

say "CPU and memory on each side"
"$hp" pods --stats

short() { echo "${1:0:13}"; }
cat <<MSG

The demo pod (default/$name) is left running. Explore it with crictl (or ./bin/heteropod cri, which takes the same commands):
  export CONTAINER_RUNTIME_ENDPOINT=$CONTAINER_RUNTIME_ENDPOINT
  crictl pods; crictl ps
  crictl logs $(short "$proxy")                                 # haproxy's request log, from the DPU
  crictl exec $(short "$proxy") cat /proc/self/cgroup           # runs on the DPU
  crictl exec $(short "$app") wget -qO- http://127.0.0.1:15006/ # app -> proxy over the pod's localhost
  crictl stats                                              # CPU and memory; the DPU's are read on the DPU
  crictl port-forward $(short "$pod") 8080:15006                # then, on this machine: curl http://127.0.0.1:8080/
  ./bin/heteropod pods --stats                              # where each container runs, CPU and memory per side
  ./bin/heteropod xpu stats                                 # the XPU link's counters
Remove the pod (with CONTAINER_RUNTIME_ENDPOINT as above):
  ./bin/heteropod cri stopp $(short "$pod") && ./bin/heteropod cri rmp $(short "$pod")
Remove everything (the pod, the test bed, the emulated DPU):
  ./bin/heteropod local down
MSG
