#!/usr/bin/env bash
# See the agent work in a minute: a private Mosquitto on a free port, the agent publishing to it,
# and its live MQTT messages on your terminal. Everything lives in .demo/ (logs, config, state).
#
#   scripts/demo.sh               run until Ctrl-C
#   scripts/demo.sh --seconds N   stop by itself after N seconds of watching; exit 0 only if the
#                                 agent ran throughout and at least one message arrived (CI smoke)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

run_seconds=""
while (($#)); do
    case "$1" in
        --seconds)
            run_seconds=${2:-}
            shift 2 || true
            if [[ ! $run_seconds =~ ^[1-9][0-9]*$ ]]; then
                echo "demo.sh: --seconds needs a positive whole number" >&2
                exit 2
            fi
            ;;
        -h | --help)
            sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "demo.sh: unknown argument: $1 (try --help)" >&2
            exit 2
            ;;
    esac
done

bash scripts/deps.sh
bash scripts/venv.sh

demo=$root/.demo
agent=$root/.venv/bin/classroom-agent
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[[ -x $mosquitto ]] || {
    echo "demo.sh: mosquitto not found (scripts/deps.sh installs it)" >&2
    exit 1
}

free_port() {
    "$root/.venv/bin/python" -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# A fresh .demo/ each time, so that its logs are those of this run.
rm -rf "$demo"
mkdir -p "$demo/state"
mqtt_port=$(free_port)
status_port=$(free_port)
while [[ $status_port == "$mqtt_port" ]]; do status_port=$(free_port); done

device=$(hostname -s 2>/dev/null || hostname)
device=$(printf '%s' "$device" | LC_ALL=C tr '[:upper:]' '[:lower:]' | LC_ALL=C sed 's/[^a-z0-9-]/-/g; s/^-*//' | cut -c1-64)
device=${device:-demo-terminal}

cat >"$demo/mosquitto.conf" <<EOF
# Private broker for scripts/demo.sh (not the system one, which may hold port 1883).
listener $mqtt_port 127.0.0.1
allow_anonymous true
persistence false
# stdout goes to .demo/mosquitto.log (opened by this script, so that it works after mosquitto
# drops root privileges to its own user).
log_dest stdout
log_timestamp_format %Y-%m-%dT%H:%M:%S
EOF

cat >"$demo/agent.yaml" <<EOF
# Written by scripts/demo.sh
device:
  id: "$device"
  school: "demo-school"
  name: "demo on $device"
mqtt:
  host: "127.0.0.1"
  port: $mqtt_port
state_dir: "$demo/state"
telemetry:
  interval_s: 5
media:
  video: {source: synthetic, width: 1280, height: 720, fps: 30}
  audio: {source: synthetic}
  recording: {segment_s: 10, min_free_mb: 500}
status:
  listen: "127.0.0.1:$status_port"
  socket: "$demo/control.sock"
# The demo has no platform key: MQTT commands are off rather than accepted unsigned.
commands:
  require_signature: true
EOF

mosq_pid=""
agent_pid=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $agent_pid ]] && kill -0 "$agent_pid" 2>/dev/null; then
        echo "demo.sh: stopping the agent (SIGTERM)"
        kill -TERM "$agent_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$agent_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$agent_pid" 2>/dev/null; then
            echo "demo.sh: the agent did not stop within 10 s; SIGKILL" >&2
            kill -KILL "$agent_pid" 2>/dev/null || true
        fi
        wait "$agent_pid" 2>/dev/null || true
    fi
    if [[ -n $mosq_pid ]] && kill -0 "$mosq_pid" 2>/dev/null; then
        kill -TERM "$mosq_pid" 2>/dev/null || true
        wait "$mosq_pid" 2>/dev/null || true
    fi
    echo "demo.sh: logs: .demo/agent.log, .demo/mosquitto.log (config: .demo/agent.yaml)"
    show_recording
    exit "$status"
}
# The demo lesson's segments, joined into one file the user can play.
show_recording() {
    local dir segs=() list
    dir=$(find "$demo/state/recordings" -mindepth 1 -maxdepth 1 -type d 2>/dev/null | sort | tail -n 1)
    [[ -n $dir ]] || return 0
    mapfile -t segs < <(find "$dir" -name 'seg-*.ts' | sort)
    ((${#segs[@]})) || return 0
    list=$(IFS='|'; echo "${segs[*]}")
    if ffmpeg -hide_banner -loglevel error -y -i "concat:$list" -c copy "$demo/demo-lesson.mp4"; then
        echo "demo.sh: the demo lesson's recording (${#segs[@]} segment(s) in ${dir#"$root"/}):"
        echo "           play it with: ffplay .demo/demo-lesson.mp4   (or vlc, mpv)"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "demo.sh: starting a private Mosquitto on 127.0.0.1:$mqtt_port"
"$mosquitto" -c "$demo/mosquitto.conf" >"$demo/mosquitto.log" 2>&1 &
mosq_pid=$!
for _ in $(seq 1 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null; then break; fi
    if ! kill -0 "$mosq_pid" 2>/dev/null; then
        echo "demo.sh: mosquitto exited; .demo/mosquitto.log says:" >&2
        tail -n 20 "$demo/mosquitto.log" >&2
        exit 1
    fi
    sleep 0.1
done

echo "demo.sh: starting: classroom-agent run --config .demo/agent.yaml (device $device)"
# Not under systemd here, whatever launched this script.
env -u NOTIFY_SOCKET -u WATCHDOG_USEC -u WATCHDOG_PID \
    "$agent" run --config "$demo/agent.yaml" >"$demo/agent.log" 2>&1 &
agent_pid=$!

printf 'demo.sh: waiting for the agent to answer "classroom-agent status" '
ready=0
for _ in $(seq 1 40); do
    if ! kill -0 "$agent_pid" 2>/dev/null; then
        echo
        echo "demo.sh: the agent exited; .demo/agent.log says:" >&2
        tail -n 30 "$demo/agent.log" >&2
        exit 1
    fi
    rc=0
    "$agent" status --config "$demo/agent.yaml" >/dev/null 2>&1 || rc=$?
    if ((rc == 0 || rc == 1)); then # running (1: with warnings, e.g. not connected yet)
        ready=1
        break
    fi
    printf '.'
    sleep 0.5
done
echo
if ((!ready)); then
    echo "demo.sh: no answer from the agent within 20 s; .demo/agent.log says:" >&2
    tail -n 30 "$demo/agent.log" >&2
    exit 1
fi

echo "demo.sh: classroom-agent lesson start --course demo --duration 20"
"$agent" lesson start --course demo --teacher "Demo Teacher" --duration 20 \
    --config "$demo/agent.yaml" || true
sleep 3
echo "demo.sh: classroom-agent status --config .demo/agent.yaml"
"$agent" status --config "$demo/agent.yaml" || true
echo
echo "demo.sh: live messages (watch them yourself with:"
echo "           mosquitto_sub -h 127.0.0.1 -p $mqtt_port -t 'classroom/v1/#' -v )"
if [[ -n $run_seconds ]]; then
    echo "demo.sh: stopping by itself after $run_seconds s"
else
    echo "demo.sh: Ctrl-C to stop"
fi

# Long payloads (inventory) are cut to the terminal's width on screen; .demo/messages.log keeps
# them whole.
width=$(tput cols 2>/dev/null || echo 160)
((width > 20)) || width=160
sub_opts=(-h 127.0.0.1 -p "$mqtt_port" -t 'classroom/v1/#' -v)
if [[ -n $run_seconds ]]; then sub_opts+=(-W "$run_seconds"); fi
mosquitto_sub "${sub_opts[@]}" | tee "$demo/messages.log" | cut -c "1-$width" || true

if [[ -z $run_seconds ]]; then
    exit 0
fi

# --seconds: judge the run.
seen=$(grep -c '^classroom/v1/' "$demo/messages.log" || true)
alive=0
kill -0 "$agent_pid" 2>/dev/null && alive=1
echo "demo.sh: $seen message(s) seen; agent $( ((alive)) && echo running || echo NOT running)"
if ((!alive)); then
    echo "demo.sh: FAILED: the agent stopped during the demo; .demo/agent.log says:" >&2
    tail -n 30 "$demo/agent.log" >&2
    exit 1
fi
kill -TERM "$agent_pid"
agent_status=0
wait "$agent_pid" || agent_status=$?
agent_pid=""
if ((agent_status != 0)); then
    echo "demo.sh: FAILED: the agent exited $agent_status on SIGTERM (expected 0)" >&2
    tail -n 30 "$demo/agent.log" >&2
    exit 1
fi
if ((seen == 0)); then
    echo "demo.sh: FAILED: no MQTT message arrived in $run_seconds s" >&2
    exit 1
fi
if ! find "$demo/state/recordings" -name 'seg-*.ts' -size +1k 2>/dev/null | grep -q .; then
    echo "demo.sh: FAILED: the demo lesson recorded nothing; .demo/agent.log says:" >&2
    tail -n 30 "$demo/agent.log" >&2
    exit 1
fi
echo "demo.sh: OK"
