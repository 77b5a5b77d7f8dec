#!/usr/bin/env bash
# Debian packages napari needs on a headless machine: Xvfb and Mesa OpenGL, and Qt's X11 libraries.
# Installs only what is missing; needs root (or sudo) when something is.
set -euo pipefail
PACKAGES="xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4
  libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xfixes0
  libdbus-1-3 libfontconfig1"
command -v dpkg-query >/dev/null || { echo "not a Debian system: install Xvfb and Mesa GL yourself"; exit 0; }
missing=""
for pkg in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
echo "installing Debian packages:$missing"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq $missing >/dev/null
