#!/usr/bin/env bash
# A local apt repository for the production scenario, signed with a throwaway key made here, in two trees laid
# out like Oracle's (virtualbox/: dists/<suite>/contrib) and HashiCorp's (hashicorp/: dists/<suite>/main)
# repositories. It holds STAND-IN packages built with dpkg-deb: `virtualbox-7.1` (a /sbin/vboxconfig and a
# VBoxManage that only print that they are stand-ins, and a VBoxSVC that only does the startup handshake -
# VirtualBox itself cannot run on these machines: no kernel modules load in the lab) and `vagrant` (a /usr/bin/vagrant that prints its version). Nothing of Oracle's or
# HashiCorp's is in them; only the repository layout, the package names and version strings are theirs.
# Usage: aptrepo.sh <out dir> <suite> <virtualbox full version> <vagrant version> [<older virtualbox> <older vagrant>]
# The older versions (the same virtualbox-<major.minor> package) stand for what a box built at an earlier pin has.
set -euo pipefail
out=$1 suite=$2 vbox_pin=$3 vagrant_pin=$4 vbox_old=${5:-} vagrant_old=${6:-}
vbox_minor=${vbox_pin%.*}
rm -rf "$out" && mkdir -p "$out"
export GNUPGHOME="$out/.gnupg"
mkdir -m 0700 "$GNUPGHOME"
gpg --batch --quiet --passphrase '' --quick-gen-key "twt throwaway apt key <twt@example.invalid>" ed25519 sign 1d
gpg --batch --quiet --armor --export > "$out/key.asc"

deb() { # name version arch dir-with-files description
  local name=$1 version=$2 dir=$3 desc=$4
  mkdir -p "$dir/DEBIAN"
  printf 'Package: %s\nVersion: %s\nArchitecture: amd64\nMaintainer: twt <twt@example.invalid>\nDescription: %s\n' \
    "$name" "$version" "$desc" > "$dir/DEBIAN/control"
  dpkg-deb --root-owner-group --build "$dir" "$5" >/dev/null
}

tree() { # repo component deb-path
  local repo=$1 comp=$2 debfile=$3 d
  d="$out/$repo/dists/$suite/$comp/binary-amd64"
  mkdir -p "$d" "$out/$repo/pool"
  mv "$debfile" "$out/$repo/pool/"
  (cd "$out/$repo" && dpkg-scanpackages --multiversion pool /dev/null 2>/dev/null > "dists/$suite/$comp/binary-amd64/Packages")
  gzip -9knf "$d/Packages"
  (
    cd "$out/$repo/dists/$suite"
    printf 'Origin: twt stand-in\nLabel: twt stand-in\nSuite: %s\nCodename: %s\nDate: %s\nArchitectures: amd64\nComponents: %s\n' \
      "$suite" "$suite" "$(LC_ALL=C date -u '+%a, %d %b %Y %H:%M:%S UTC')" "$comp"
    echo 'SHA256:'
    for f in "$comp/binary-amd64/Packages" "$comp/binary-amd64/Packages.gz"; do
      printf ' %s %s %s\n' "$(sha256sum "$f" | cut -d' ' -f1)" "$(stat -c %s "$f")" "$f"
    done
  ) > "$out/$repo/dists/$suite/Release"
  gpg --batch --quiet --yes --clearsign -o "$out/$repo/dists/$suite/InRelease" "$out/$repo/dists/$suite/Release"
  gpg --batch --quiet --yes -abs -o "$out/$repo/dists/$suite/Release.gpg" "$out/$repo/dists/$suite/Release"
  cp "$out/key.asc" "$out/$repo/key.asc"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

build_vbox() { # <version>: the stand-in virtualbox-<major.minor> package at this version, into the pool
  local vbox=$1 v="$work/vbox-$1"
  mkdir -p "$v/sbin" "$v/usr/bin"
  printf '#!/bin/sh\necho "vboxconfig: stand-in of the test repository, no modules built (VirtualBox cannot run here)"\n' > "$v/sbin/vboxconfig"
  # provenance of the stand-in VBoxManage's two answers (VirtualBox 7.1 sources): `list extpacks` with none
  # installed prints "Extension Packs: 0" (VBoxManageList.cpp listExtensionPacks(), RTPrintf "Extension Packs: %u");
  # `--version` has the real shape "<version>r<revision>" (VBoxManage.cpp, RTPrintf "%sr%u" with VBOX_VERSION_STRING
  # and RTBldCfgRevision()), except that the revision "0twt" marks the stand-in; nothing parses it.
  printf '#!/bin/sh\ncase "$1" in --version) echo "%sr0twt";; list) echo "Extension Packs: 0";; *) echo "VBoxManage: stand-in" >&2; exit 1;; esac\n' "$vbox" > "$v/usr/bin/VBoxManage"
  # VBoxSVC stand-in for travis-vboxsvc.service (roles/worker): like VBoxSVC with --inherit-startup-pipe N
  # (src/VBox/Main/src-server/xpcom/server.cpp) it writes READY to fd N once it "serves", then it only idles.
  mkdir -p "$v/usr/lib/virtualbox"
  cat > "$v/usr/lib/virtualbox/VBoxSVC" <<'SVC'
#!/bin/sh
# stand-in of the test repository (VirtualBox cannot run here): the startup-pipe handshake only
if [ "${1:-}" = --inherit-startup-pipe ] && [ -n "${2:-}" ]; then
  eval "printf READY >&$2; exec $2>&-"
fi
exec sleep infinity
SVC
  chmod 0755 "$v/sbin/vboxconfig" "$v/usr/bin/VBoxManage" "$v/usr/lib/virtualbox/VBoxSVC"
  deb "virtualbox-$vbox_minor" "$vbox-0twt~Debian~$suite" "$v" "stand-in for Oracle VM VirtualBox $vbox (test repository)" \
    "$work/virtualbox-${vbox_minor}_${vbox}-0twt_amd64.deb"
  tree virtualbox contrib "$work/virtualbox-${vbox_minor}_${vbox}-0twt_amd64.deb"
}

build_vagrant() { # <version>
  local vagrant=$1 g="$work/vagrant-$1"
  mkdir -p "$g/usr/bin"
  printf '#!/bin/sh\necho "Vagrant %s (stand-in of the test repository)"\n' "$vagrant" > "$g/usr/bin/vagrant"
  chmod 0755 "$g/usr/bin/vagrant"
  deb vagrant "$vagrant-1" "$g" "stand-in for HashiCorp Vagrant $vagrant (test repository)" "$work/vagrant_${vagrant}-1_amd64.deb"
  tree hashicorp main "$work/vagrant_${vagrant}-1_amd64.deb"
}

if [[ -n $vbox_old ]]; then build_vbox "$vbox_old"; fi
build_vbox "$vbox_pin"
if [[ -n $vagrant_old ]]; then build_vagrant "$vagrant_old"; fi
build_vagrant "$vagrant_pin"
cp "$out/key.asc" "$out/hashicorp/gpg"
echo "apt repository in $out"
