#!/usr/bin/env bash
# Install classroom-agent on a classroom PC (Debian 12), as root, from this checkout.
#
#   scripts/install.sh --school SCHOOL [--device-id ID] [--broker HOST[:PORT]]
#                      (--command-key PLATFORM.pub.pem | --allow-unsigned-commands)
#   scripts/install.sh --uninstall
#   --check-only checks the options and exits without changing anything.
#
# MQTT commands start and stop the classroom's camera and microphone, so a production install
# needs the platform's Ed25519 public key (--command-key: commands must be signed with the
# platform's private key), or an explicit --allow-unsigned-commands (anyone who can publish to
# the terminal's command topic may then use it; the agent shows that as a warning).
#
# What it does (safe to run again, e.g. to upgrade):
#   - system packages (scripts/deps.sh --runtime)
#   - system user and group "classroom-agent" (in groups video and audio, for camera and mic);
#     members of the group are the technicians who may run "classroom-agent lesson ..." (add
#     one with: usermod -aG classroom-agent NAME)
#   - --command-key: the key as /etc/classroom-agent/command-keys/platform.pub.pem
#   - /opt/classroom-agent/venv with the agent installed from this checkout (not editable)
#   - /usr/local/bin/classroom-agent -> the venv's command, for "classroom-agent status"
#   - /etc/classroom-agent/agent.yaml, only if it does not exist yet: device.id (default: this
#     host's short name), device.school and mqtt.host/port from the options; an existing file is
#     never touched (the options are then ignored). config/agent.example.yaml lists every key.
#   - checks the configuration as the service user ("classroom-agent config check") and stops
#     if it is wrong
#   - /etc/systemd/system/classroom-agent.service; enables and (re)starts it when systemd runs
#
# --uninstall removes the unit, the venv and the command, and keeps /etc/classroom-agent,
# /var/lib/classroom-agent (outbox, recordings) and the user.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

user=classroom-agent
prefix=/opt/classroom-agent
venv=$prefix/venv
etc_dir=/etc/classroom-agent
config=$etc_dir/agent.yaml
state_dir=/var/lib/classroom-agent
unit_dir=/etc/systemd/system
unit=$unit_dir/classroom-agent.service
link=/usr/local/bin/classroom-agent
# Debian's interpreter, not a pyenv/other one under /root: the service user must be able to
# read the interpreter the venv points at, and it must not change under the service's feet.
python=${PYTHON:-/usr/bin/python3}

say() { echo "install.sh: $*"; }
die() {
    echo "install.sh: ERROR: $*" >&2
    exit 1
}
usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; }

device_id=""
school=""
broker=""
command_key=""
allow_unsigned=0
uninstall=0
check_only=0
while (($#)); do
    case "$1" in
        --device-id | --school | --broker | --command-key)
            [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"
            case "$1" in
                --device-id) device_id=$2 ;;
                --school) school=$2 ;;
                --broker) broker=$2 ;;
                --command-key) command_key=$2 ;;
            esac
            shift 2
            ;;
        --device-id=* | --school=* | --broker=* | --command-key=*)
            value=${1#*=}
            case "$1" in
                --device-id=*) device_id=$value ;;
                --school=*) school=$value ;;
                --broker=*) broker=$value ;;
                --command-key=*) command_key=$value ;;
            esac
            shift
            ;;
        --allow-unsigned-commands)
            allow_unsigned=1
            shift
            ;;
        --check-only)
            check_only=1
            shift
            ;;
        --uninstall)
            uninstall=1
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            die "unknown argument: $1"
            ;;
    esac
done

((EUID == 0)) || die "run as root (sudo $0 $*)"

systemd_running=0
[[ -d /run/systemd/system ]] && systemd_running=1 # sd_booted(): systemd is PID 1

if ((uninstall)); then
    if ((systemd_running)); then
        say "stopping and disabling the service"
        systemctl disable --now classroom-agent.service 2>/dev/null || true
    fi
    if [[ -e $unit ]]; then
        say "removing $unit"
        rm -f "$unit"
        if ((systemd_running)); then systemctl daemon-reload; fi
    fi
    if [[ -L $link && $(readlink "$link") == "$venv/bin/classroom-agent" ]]; then
        rm -f "$link"
    fi
    if [[ -d $prefix ]]; then
        say "removing $prefix"
        rm -rf "$prefix"
    fi
    say "uninstalled. Kept: $etc_dir (configuration), $state_dir (outbox, recordings) and the"
    say "user '$user'. To remove them too: rm -rf $etc_dir $state_dir && userdel $user"
    exit 0
fi

# --- check the options before changing anything ---
key_dir=$etc_dir/command-keys
installed_key=$key_dir/platform.pub.pem
if [[ -n $command_key ]]; then
    ((!allow_unsigned)) || die "--command-key and --allow-unsigned-commands exclude each other"
    [[ -f $command_key && -r $command_key ]] || die "--command-key: cannot read '$command_key'"
    # The agent's own reader (agent/pemkey.py, standard library only), so what install accepts
    # is exactly what the agent will load: an Ed25519 public key, not RSA, not a private key.
    key_problem=$(PYTHONPATH=$root "$python" -c '
import sys
from agent.pemkey import KeyFileError, read_ed25519_public_key
try:
    read_ed25519_public_key(sys.argv[1])
except (KeyFileError, OSError) as exc:
    sys.exit(str(exc))' "$command_key" 2>&1) ||
        die "--command-key: $key_problem (scripts/send-command --keygen writes an Ed25519 key
pair; the terminal gets only the *.pub.pem)"
elif ((!allow_unsigned)) && [[ ! -e $config ]]; then # an upgrade keeps the config's choice
    die "say how the terminal checks MQTT commands, which start and stop its camera and microphone:
  --command-key PLATFORM.pub.pem    the platform's Ed25519 public key: only commands signed with
                                    the platform's private key run (production)
  --allow-unsigned-commands         anyone who can publish to this terminal's command topic may
                                    run commands (tests, demos; the agent warns about it)
Nothing was changed."
fi
if ((allow_unsigned)); then
    echo "install.sh: WARNING: --allow-unsigned-commands: this terminal will run MQTT commands" >&2
    echo "install.sh: WARNING: that nobody signed. Anyone with access to its command topic can" >&2
    echo "install.sh: WARNING: start its camera and microphone. 'classroom-agent status' says so." >&2
fi
mqtt_host=""
mqtt_port=""
if [[ -n $broker ]]; then
    if [[ $broker =~ ^\[([0-9A-Fa-f:.]+)\](:([0-9]+))?$ ]]; then # [IPv6]:PORT
        mqtt_host=${BASH_REMATCH[1]}
        mqtt_port=${BASH_REMATCH[3]}
    elif [[ $broker =~ ^([A-Za-z0-9_.-]+)(:([0-9]+))?$ ]]; then
        mqtt_host=${BASH_REMATCH[1]}
        mqtt_port=${BASH_REMATCH[3]}
    else
        die "--broker: expected HOST or HOST:PORT (or [IPv6]:PORT), got '$broker'"
    fi
    if [[ -n $mqtt_port ]] && ((${#mqtt_port} > 5 || 10#$mqtt_port < 1 || 10#$mqtt_port > 65535)); then
        die "--broker: port $mqtt_port is out of range"
    fi
    [[ -z $mqtt_port ]] || mqtt_port=$((10#$mqtt_port)) # no leading zeros in the YAML
fi
name_re='^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'
if [[ ! -e $config ]]; then
    if [[ -z $device_id ]]; then
        device_id=$(hostname -s | LC_ALL=C tr '[:upper:]' '[:lower:]' |
            LC_ALL=C sed 's/[^a-z0-9_.-]/-/g; s/^[^a-z0-9]*//' | cut -c1-64)
        say "--device-id not given: using this host's name '$device_id'"
    fi
    [[ -n $school ]] || die "first install: --school SCHOOL is required (it is part of every MQTT
topic). Or write $config yourself first (see config/agent.example.yaml) and run this again."
    [[ $device_id =~ $name_re ]] || die "--device-id '$device_id': 1-64 letters, digits, '.', '_' or '-'"
    [[ $school =~ $name_re ]] || die "--school '$school': 1-64 letters, digits, '.', '_' or '-'"
elif [[ -n $device_id$school$broker ]]; then
    say "NOTE: $config exists and is kept as it is: --device-id/--school/--broker are ignored;"
    say "      edit it and run: systemctl reload classroom-agent"
fi

if ((check_only)); then
    say "the options are fine; nothing was changed (--check-only)"
    exit 0
fi

# --- system packages ---
say "system packages"
PYTHON=$python bash "$root/scripts/deps.sh" --runtime
"$python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null ||
    die "$python must be Python >= 3.11 (Debian 12 has 3.11); set PYTHON=/path/to/python3"

# --- user ---
if id -u "$user" >/dev/null 2>&1; then
    say "user $user exists"
else
    say "creating system user $user"
    group_opt=(--user-group)
    if getent group "$user" >/dev/null; then group_opt=(--gid "$user"); fi
    useradd --system "${group_opt[@]}" --no-create-home --home-dir "$state_dir" \
        --shell /usr/sbin/nologin --comment "classroom-agent daemon" "$user"
fi
for group in video audio; do
    if getent group "$group" >/dev/null; then
        usermod -a -G "$group" "$user"
    fi
done

# --- the agent in its own venv ---
if [[ -x $venv/bin/python ]] && ! "$venv/bin/python" -c '' 2>/dev/null; then
    say "$venv is broken; recreating it"
    rm -rf "$venv"
fi
if [[ ! -x $venv/bin/python ]]; then
    say "creating $venv ($("$python" -V))"
    install -d -m 0755 "$prefix"
    "$python" -m venv "$venv"
fi
pip_opts=(--disable-pip-version-check --no-cache-dir)
[[ -t 1 ]] || pip_opts+=(--progress-bar off)
"$venv/bin/python" -m pip install -q "${pip_opts[@]}" --upgrade pip
# Build from a copy of just what the build needs, so that it leaves no root-owned build/ and
# *.egg-info in the checkout, and no local venv, state or bench data gets in.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
(
    cd "$root"
    shopt -s nullglob
    tar --exclude='__pycache__' -cf - pyproject.toml README* LICENSE* agent
) | tar -C "$src" -xf -
say "installing the agent into $venv"
# pip always rebuilds and reinstalls a local directory, even at the same version number, so an
# upgrade from a newer checkout replaces the code.
"$venv/bin/python" -m pip install "${pip_opts[@]}" "$src"
chmod -R u=rwX,go=rX "$prefix"
ln -sfn "$venv/bin/classroom-agent" "$link"
say "installed $("$venv/bin/python" -m pip show classroom-agent 2>/dev/null |
    sed -n 's/^Version: /classroom-agent /p')"

# --- configuration and state directories (the unit's ConfigurationDirectory= and
# StateDirectory=; systemd would create /etc/classroom-agent root-owned, unreadable for the user)
install -d -m 0750 -o root -g "$user" "$etc_dir"
install -d -m 0750 -o "$user" -g "$user" "$state_dir"
if [[ -n $command_key ]]; then
    install -d -m 0755 "$key_dir"
    install -m 0644 "$command_key" "$installed_key"
    say "installed the platform's command key as $installed_key"
fi
yaml_quote() { # a YAML double-quoted scalar
    local s=${1//\\/\\\\}
    printf '"%s"' "${s//\"/\\\"}"
}
if [[ ! -e $config ]]; then
    say "writing $config"
    tmp=$(mktemp "$etc_dir/.agent.yaml.XXXXXX")
    {
        echo "# classroom-agent configuration, written by scripts/install.sh on $(date -u +%F)."
        echo "# Check it with: classroom-agent config check $config"
        echo "# Apply changes: systemctl reload classroom-agent"
        echo "device:"
        echo "  id: $(yaml_quote "$device_id")"
        echo "  school: $(yaml_quote "$school")"
        if [[ -n $mqtt_host ]]; then
            echo "mqtt:"
            echo "  host: $(yaml_quote "$mqtt_host")"
            if [[ -n $mqtt_port ]]; then echo "  port: $mqtt_port"; fi
        fi
        echo "commands:"
        if [[ -n $command_key ]]; then
            echo "  # only commands signed with the platform's private key run"
            echo "  public_keys: [$(yaml_quote "$installed_key")]"
        else
            echo "  # WARNING: installed with --allow-unsigned-commands: MQTT commands run unsigned"
            echo "  require_signature: false"
        fi
        example=$root/config/agent.example.yaml
        if [[ -f $example ]]; then
            echo
            echo "# ---------------------------------------------------------------------------"
            echo "# Every key, with its default: config/agent.example.yaml, commented out below."
            echo "# Uncomment a key to change it (one 'mqtt:' or 'device:' section only)."
            echo "# ---------------------------------------------------------------------------"
            sed 's/^/# /; s/^# $/#/' "$example"
        fi
    } >"$tmp"
    chown root:"$user" "$tmp"
    chmod 0640 "$tmp"
    mv "$tmp" "$config"
else
    say "keeping $config"
fi

say "checking $config (as user $user)"
if ! runuser -u "$user" -- "$venv/bin/classroom-agent" config check "$config"; then
    die "the configuration $config is not valid (see above). Fix it and run install.sh again;
the service was not (re)started."
fi
# An existing config is kept as it is: it must already check commands the way the options say.
posture=$(runuser -u "$user" -- "$venv/bin/python" -c 'import sys
from agent import config
c = config.load(sys.argv[1]).commands
print("signed" if c.signatures_required else "unsigned")
print(*c.public_keys, sep="\n")' "$config")
if [[ -n $command_key ]] && ! grep -qxF -- "$installed_key" <<<"$posture"; then
    die "$config does not list $installed_key. Add it and run install.sh again:
  commands:
    public_keys: [\"$installed_key\"]
The service was not (re)started."
fi
if [[ $(head -n 1 <<<"$posture") == unsigned ]] && ((!allow_unsigned)); then
    die "$config accepts unsigned MQTT commands. Give it the platform's key
(commands.public_keys), or run install.sh with --allow-unsigned-commands on purpose.
The service was not (re)started."
fi

# --- systemd ---
install -m 0644 "$root/systemd/classroom-agent.service" "$unit"
say "installed $unit"
if ((systemd_running)); then
    systemctl daemon-reload
    systemctl enable classroom-agent.service
    # restart, not just start: after an upgrade the running daemon must pick up the new code.
    systemctl restart classroom-agent.service
    say "started. Check it with: classroom-agent status   (logs: journalctl -u classroom-agent)"
    say "technicians who may run 'classroom-agent lesson ...': usermod -aG $user NAME"
else
    say "systemd is not running here (not PID 1); on the classroom PC run:"
    say "  systemctl daemon-reload && systemctl enable --now classroom-agent"
fi
