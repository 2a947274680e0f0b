#!/usr/bin/env bash
# make demo: the test bed and a demo pod, left running to explore with crictl.
set -euo pipefail
cd "$(dirname "$0")/.."
hp=./bin/heteropod
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "bringing up the local test bed (private containerd, CNI, local images)"
$hp local up

if existing=$($hp cri pods --name demo -q) && [ -n "$existing" ]; then
  say "removing the previous demo pod"
  $hp cri stopp $existing >/dev/null && $hp cri rmp $existing >/dev/null
fi

say "running the demo pod"
pod=$($hp cri runp --runtime runc scripts/demo/pod.yaml)
app=$($hp cri create "$pod" scripts/demo/app.yaml scripts/demo/pod.yaml)
$hp cri start "$app" >/dev/null
$hp cri pods
echo
$hp cri ps -p "$pod"

say "fetching the page from inside the pod"
for _ in $(seq 50); do
  if page=$($hp cri exec "$app" wget -qO- http://127.0.0.1:8080/ 2>/dev/null); then break; fi
  sleep 0.1
done
echo "${page:-no answer from the app}"
ip=$($hp cri inspectp "$pod" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).status.network.ip))')
echo "pod IP: $ip"

say "the app's log (what crictl logs shows)"
$hp cri logs "$app"

say "container stats"
$hp cri stats

cat <<MSG

The demo pod is left running. Explore it:
  export CONTAINER_RUNTIME_ENDPOINT=unix:///run/heteropod/containerd.sock
  crictl pods; crictl ps; crictl logs $app; crictl exec $app ps   (or: ./bin/heteropod cri …)
  ./bin/heteropod cri exec $app wget -qO- http://127.0.0.1:8080/
Remove the pod:        ./bin/heteropod cri stopp $pod && ./bin/heteropod cri rmp $pod
Remove everything:     ./bin/heteropod local down
MSG
