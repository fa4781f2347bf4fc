#!/usr/bin/env bash
# Installs what the tests talk to, on a fresh Debian/Ubuntu machine with Rust:
#   - Debian packages: mosquitto (the MQTT broker), Cyclone DDS 0.10 (the second DDS
#     implementation, the one inside ROS 2 Humble and Jazzy), Python and its headers,
#     systemd (systemd-analyze checks the unit, systemd-sysusers makes the package's user),
#     lintian and binutils (the Debian package's checks), openssl (signs OTA packages in
#     the signature tests), bsdiff (the delta package tests' second implementation);
#   - a project-local virtualenv (.venv) with rosbags (the reference CDR implementation),
#     the cyclonedds 0.10.2 Python binding built against Debian's Cyclone, onnx and
#     onnxruntime.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(mosquitto mosquitto-clients cyclonedds-dev python3 python3-venv python3-dev gcc pkg-config systemd lintian binutils openssl bsdiff nasm)

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd=(sudo)
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The cyclonedds sdist looks for include/, lib/ and bin/ under CYCLONEDDS_HOME;
# Debian spreads them over /usr, so give it a folder of links.
venv=.venv
ddsc=$(find /usr/lib /usr/lib64 -name 'libddsc.so' 2>/dev/null | head -n1 || true)
if [ -z "$ddsc" ]; then
    echo "setup: libddsc.so not found although cyclonedds-dev is installed" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating the test virtualenv in $venv"
    python3 -m venv "$venv"
fi
cyhome="$venv/cyclonedds-home"
mkdir -p "$cyhome/lib"
ln -sfn /usr/include "$cyhome/include"
ln -sfn /usr/bin "$cyhome/bin"
for lib in "$(dirname "$ddsc")"/libddsc.so* "$(dirname "$ddsc")"/libcycloneddsidl.so*; do
    ln -sfn "$lib" "$cyhome/lib/$(basename "$lib")"
done

stamp="$venv/.requirements.sha256"
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing Python packages into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip setuptools wheel
    CYCLONEDDS_HOME="$PWD/$cyhome" "$venv/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
    echo "$want" > "$stamp"
fi
