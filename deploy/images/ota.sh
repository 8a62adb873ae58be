#!/usr/bin/env bash
# An over-the-air image update for one device, the way a fleet agent does it: pull the new
# image, start it beside the one serving, wait until it is ready and has answered a test frame,
# then switch to it and stop the old one with a drain. A candidate that fails any step is
# removed and the serving container is never touched.
#
#   deploy/images/ota.sh start  <image>   # first install, in slot a
#   deploy/images/ota.sh update <image>   # exit 0: switched; 1: rejected, the old one serves
#   deploy/images/ota.sh status
#
# Two slots, <name>-a and <name>-b, each publishing the gateway on its own port. The switch
# is the drain: the old slot's clients get `goaway` and reconnect, to the other slot's port
# (`edge stream --url ws://dev:8080 --url ws://dev:8090`: replicas) or through whatever
# fronts the device. Both slots share the models volume, so model updates survive images.
#
# Environment (defaults in brackets):
#   OTA_NAME [edge-gateway]           container name prefix
#   OTA_PORTS ["8080 8090"]           host ports of slot a and slot b
#   OTA_BIND [127.0.0.1]              address the ports are published on
#   OTA_VOLUME [edge-gateway-models]  the models volume, on /models
#   OTA_ENV_FILE                      docker --env-file for both slots (EDGE_AUTH_TOKENS, ...)
#   OTA_RUN_ARGS                      more `docker run` arguments, word-split
#   OTA_FRAME                         test frame (JPEG/PNG); without one, no frame test
#   OTA_READY_S [900]                 how long a candidate may take to become ready
#   OTA_STOP_S [30]                   the drain's grace: longer than EDGE_DRAIN_SECONDS
#
# The same steps in a balena/Mender update module or a systemd unit: docs/deploy.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
docker() { command "${DOCKER:-docker}" "$@"; }
name=${OTA_NAME:-edge-gateway}
read -r -a ports <<<"${OTA_PORTS:-8080 8090}"
bind=${OTA_BIND:-127.0.0.1}
volume=${OTA_VOLUME:-edge-gateway-models}
ready_s=${OTA_READY_S:-900}
stop_s=${OTA_STOP_S:-30}
say() { echo "ota: $*"; }

running() { [ "$(docker inspect --format '{{.State.Running}}' "$1" 2>/dev/null)" = true ]; }
active_slot() { local s; for s in a b; do running "$name-$s" && { echo "$s"; return; }; done; return 1; }
port_of() { [ "$1" = a ] && echo "${ports[0]}" || echo "${ports[1]}"; }

run_slot() {  # slot image
  local args=(--detach --name "$name-$1" --restart unless-stopped --stop-timeout "$stop_s"
              --read-only --tmpfs /tmp -v "$volume:/models"
              -p "$bind:$(port_of "$1"):8080" --label "edge.ota.slot=$1")
  [ -n "${OTA_ENV_FILE:-}" ] && args+=(--env-file "$OTA_ENV_FILE")
  # shellcheck disable=SC2206  # OTA_RUN_ARGS is a word list on purpose
  [ -n "${OTA_RUN_ARGS:-}" ] && args+=($OTA_RUN_ARGS)
  docker rm -f "$name-$1" >/dev/null 2>&1 || true
  docker run "${args[@]}" "$2" >/dev/null
}

wait_ready() {  # container: 0 once /readyz answers 200 inside it; 1 if it stops or time runs out
  local start=$SECONDS
  while ((SECONDS - start < ready_s)); do
    running "$1" || { say "$1 stopped ($(docker inspect --format '{{.State.ExitCode}}' "$1"))"; return 1; }
    if docker exec "$1" python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('EDGE_PORT', '8080'), timeout=10)" >/dev/null 2>&1; then
      say "$1 ready after $((SECONDS - start)) s"; return 0
    fi
    sleep 5
  done
  say "$1 not ready within $ready_s s: $(docker exec "$1" python -c "import os, urllib.request as u
try: u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('EDGE_PORT', '8080'), timeout=10)
except Exception as e: print(e.read().decode() if hasattr(e, 'read') else e)" 2>&1 | tail -1)"
  return 1
}

frame_test() {  # container: one face frame answered with a detection
  [ -n "${OTA_FRAME:-}" ] || { say "no OTA_FRAME: frame test skipped"; return 0; }
  local out
  if out=$({ printf 'FRAME = "%s"\n' "$(base64 -w0 "$OTA_FRAME")"; cat "$here/smoke.py"; } \
           | docker exec -i "$1" python - 2>&1); then
    say "$1 answered the test frame: $(echo "$out" | tail -1 | cut -c1-200)"
  else
    say "$1 failed the test frame: $(echo "$out" | tail -1 | cut -c1-300)"; return 1
  fi
}

case ${1:-} in
start)
  image=${2:?usage: ota.sh start <image>}
  if slot=$(active_slot); then say "$name-$slot already serving"; exit 1; fi
  docker pull -q "$image" >/dev/null || say "pull failed: using the local $image"
  run_slot a "$image"
  wait_ready "$name-a" && frame_test "$name-a" || { docker logs --tail 20 "$name-a" >&2; exit 1; }
  say "serving $image in $name-a on $bind:${ports[0]}"
  ;;
update)
  image=${2:?usage: ota.sh update <image>}
  old=$(active_slot) || { say "nothing serving: use ota.sh start"; exit 1; }
  new=$([ "$old" = a ] && echo b || echo a)
  say "pulling $image"
  docker pull -q "$image" >/dev/null
  say "pulled $(docker image inspect --format '{{index .RepoDigests 0}}' "$image" 2>/dev/null || echo "$image")"
  say "starting $image in $name-$new on $bind:$(port_of "$new") beside $name-$old"
  run_slot "$new" "$image"
  if ! { wait_ready "$name-$new" && frame_test "$name-$new"; }; then
    docker logs --tail 5 "$name-$new" 2>&1 | sed 's/^/ota:   | /' >&2
    docker rm -f "$name-$new" >/dev/null
    say "rejected $image: $name-$old keeps serving $(docker inspect --format '{{.Config.Image}}' "$name-$old")"
    exit 1
  fi
  say "switching to $name-$new; draining $name-$old (up to $stop_s s)"
  start=$SECONDS
  docker stop --time "$stop_s" "$name-$old" >/dev/null
  say "$name-$old stopped after $((SECONDS - start)) s, exit code $(docker inspect --format '{{.State.ExitCode}}' "$name-$old")"
  docker rm "$name-$old" >/dev/null
  say "serving $image in $name-$new on $bind:$(port_of "$new")"
  ;;
status)
  slot=$(active_slot) || { say "nothing serving"; exit 1; }
  say "$name-$slot on $bind:$(port_of "$slot"): $(docker inspect --format '{{.Config.Image}} {{.State.Health.Status}}' "$name-$slot")"
  ;;
*)
  echo "usage: ota.sh start|update <image> | status" >&2; exit 2 ;;
esac
