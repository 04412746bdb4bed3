"""Which Debian mirror to debootstrap from (the host's apt mirror by default) and whether it answers."""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from travis_lab.errors import LabError

log = logging.getLogger(__name__)

FALLBACK_MIRROR = "http://deb.debian.org/debian"


def _sources_files(apt_dir: Path) -> list[Path]:
    files = [apt_dir / "sources.list"]
    d = apt_dir / "sources.list.d"
    if d.is_dir():
        files += sorted(d.glob("*.list")) + sorted(d.glob("*.sources"))
    return [f for f in files if f.is_file()]


def parse_sources(text: str, deb822: bool) -> list[tuple[str, list[str]]]:
    """(uri, suites) pairs of `deb` entries in a sources.list or deb822 .sources text."""
    out: list[tuple[str, list[str]]] = []
    if not deb822:
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 3 and words[0] == "deb":
                rest = [w for w in words[1:] if not w.startswith("[")]
                # drop a trailing "]" option block like [arch=amd64 signed-by=...]
                if "]" in line.split("#", 1)[0]:
                    rest = line.split("#", 1)[0].split("]", 1)[1].split()
                if len(rest) >= 2:
                    out.append((rest[0], [rest[1]]))
        return out
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            k, v = line.split(":", 1)
            fields[k.strip().lower()] = v.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
            for uri in fields.get("uris", "").split():
                out.append((uri, fields.get("suites", "").split()))
    return out


def host_mirror(suite: str, apt_dir: Path = Path("/etc/apt")) -> str | None:
    """The first host apt URI that carries `suite` and looks like a Debian archive (not -security)."""
    for f in _sources_files(apt_dir):
        for uri, suites in parse_sources(f.read_text(errors="replace"), f.suffix == ".sources"):
            if suite in suites and not uri.rstrip("/").endswith("-security"):
                return uri.rstrip("/")
    return None


def choose_mirror(suite: str, override: str | None = None) -> str:
    """`override`, else `$TRAVIS_LAB_MIRROR`, else the host's apt mirror for `suite`, else deb.debian.org."""
    chosen = override or os.environ.get("TRAVIS_LAB_MIRROR") or host_mirror(suite) or FALLBACK_MIRROR
    return chosen.rstrip("/")


def check_mirror(mirror: str, suite: str, timeout: float = 20.0) -> None:
    """Fetch `<mirror>/dists/<suite>/Release` headers; raise `LabError` (step 'mirror') if it fails."""
    url = f"{mirror}/dists/{suite}/Release"
    req = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            log.info("mirror %s answers for %s (HTTP %s)", mirror, suite, resp.status)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise LabError(
                "mirror",
                f"suite {suite!r} not found on {mirror} ({url}: HTTP 404)",
                "use a Debian suite the mirror carries (e.g. --suite bookworm) or another --mirror",
            ) from exc
        raise LabError(
            "mirror",
            f"{url} answered HTTP {exc.code}",
            "check the mirror/proxy, or use --mirror URL / TRAVIS_LAB_MIRROR=URL",
        ) from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise LabError(
            "mirror",
            f"Debian mirror unreachable: {url}: {exc}",
            "check the network/proxy, or point the lab at a reachable mirror with "
            "`--mirror URL` or TRAVIS_LAB_MIRROR=URL",
        ) from exc
