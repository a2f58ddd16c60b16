"""Checks of the HTML page `dvc plots show` writes: what it loads, and what headless Chromium draws from it offline."""

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

# Attributes through which a page loads or links something (scripts, styles, images, frames, objects, forms).
URL_ATTRIBUTES = {"src", "href", "srcset", "data", "action", "formaction", "poster", "background", "xlink:href"}
REMOTE = re.compile(r"^\s*(?://|(?:https?|wss?|ftp):)", re.IGNORECASE)
CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+)|@import\s+['\"]([^'\"]+)", re.IGNORECASE)


class _References(HTMLParser):
    """Every address the page's markup and CSS refer to; script text is data to the parser, so a URL string
    inside a library's code (its help links, SVG namespaces, a spec's `$schema` id) is not a reference."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str]] = []
        self._tag = ""

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        for name, value in attrs:
            if value is None:
                continue
            if name in URL_ATTRIBUTES:
                for part in value.split(",") if name == "srcset" else [value]:
                    self.found.append((f"<{tag} {name}>", part.strip().split(" ")[0]))
            elif name == "style":
                self._css(f"<{tag} style>", value)
            elif tag == "meta" and name == "content" and "url=" in value.lower():
                self.found.append(("<meta content>", value.lower().split("url=", 1)[1]))

    def handle_endtag(self, tag):
        self._tag = ""

    def handle_data(self, data):
        if self._tag == "style":
            self._css("<style>", data)

    def _css(self, where, text):
        for match in CSS_URL.finditer(text):
            self.found.append((where, match.group(1) or match.group(2)))


def references(page: str) -> list[tuple[str, str]]:
    """(where, address) for everything the page's markup loads or links."""
    parser = _References()
    parser.feed(page)
    parser.close()
    return parser.found


def remote_references(page: str) -> list[tuple[str, str]]:
    """The references that need a network: http(s), ws(s), ftp or protocol-relative `//host` addresses."""
    return [(where, url) for where, url in references(page) if REMOTE.match(url)]


# --- rendering, in headless Chromium without a network -----------------------------------------------------

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# First thing in <head>: records every script error and every resource that failed to load.
ERRORS_PROBE = """<script>
window.__renderErrors = [];
window.addEventListener("error", function (e) {
  var t = e.target || {};
  window.__renderErrors.push((e.message || ("failed to load " + e.type)) + " " + (e.filename || t.src || t.href || ""));
}, true);
</script>"""

# Last thing in <body>: once the page has loaded, polls each plot (DVC puts each one in a <div id> directly
# in <body>) until all have drawn or 8 s have passed, then writes its findings into <pre id="render-check">.
# A Vega plot counts as drawn when its canvas has non-white pixels (or its svg.marks has graphic elements);
# an image plot when every <img> has decoded and has non-white pixels. The actions menu's icon (an <svg>
# not of class "marks") and the div's own <script> count for nothing, so a page whose libraries did not
# load reports every Vega plot as not drawn.
RENDER_PROBE = """<script>
(function () {
  function painted(canvas) {
    if (!canvas.width || !canvas.height) return 0;
    var d = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data, n = 0;
    for (var i = 0; i < d.length; i += 4) {
      if (d[i + 3] > 0 && (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250)) n++;
    }
    return n;
  }
  function inspect() {
    return Array.prototype.filter.call(document.body.children, function (e) {
      return e.tagName === "DIV" && e.id;
    }).map(function (div) {
      var images = div.querySelectorAll("img"), canvases = div.querySelectorAll("canvas"),
          marks = div.querySelectorAll("svg.marks");
      var r = {id: div.id, canvases: canvases.length, svgs: marks.length, images: images.length,
               painted: 0, decoded: 0};
      canvases.forEach(function (c) { r.painted += painted(c); });
      marks.forEach(function (s) { r.painted += s.querySelectorAll("path,rect,line,circle,text").length; });
      images.forEach(function (im) {
        if (!im.complete || !im.naturalWidth) return;
        r.decoded++;
        var c = document.createElement("canvas");
        c.width = im.naturalWidth; c.height = im.naturalHeight;
        c.getContext("2d").drawImage(im, 0, 0);
        try { r.painted += painted(c); } catch (e) { r.unreadable = String(e); }
      });
      r.drawn = (images.length ? r.decoded === images.length : true) && r.painted > 0;
      return r;
    });
  }
  var start = Date.now();
  function poll() {
    var plots = inspect();
    if ((plots.length && plots.every(function (p) { return p.drawn; })) || Date.now() - start > 8000) {
      var remote = performance.getEntriesByType("resource").map(function (e) { return e.name; })
        .filter(function (u) { return !/^(file|data|blob|about):/i.test(u); });
      var out = document.createElement("pre");
      out.id = "render-check";
      out.textContent = JSON.stringify({plots: plots, errors: window.__renderErrors, remote: remote});
      document.body.appendChild(out);
    } else {
      setTimeout(poll, 100);
    }
  }
  window.addEventListener("load", function () { setTimeout(poll, 100); });
})();
</script>
"""


def chromium() -> str | None:
    """The headless-capable Chromium on PATH, if any."""
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    return None


def render_offline(index: Path, profile: Path, browser: str) -> dict:
    """Open a probed copy of `index` (next to it, so its relative image paths resolve) in headless Chromium with
    every network address unreachable; return the probe's findings: {"plots": [...], "errors": [...], "remote": [...]}.
    """
    page = index.read_text(encoding="utf-8")
    head = page.index("<head>") + len("<head>")
    body = page.rindex("</body>")
    probed = index.with_name("render-check.html")
    probed.write_text(page[:head] + ERRORS_PROBE + page[head:body] + RENDER_PROBE + page[body:], encoding="utf-8")
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-quic", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-extensions", "--mute-audio", f"--user-data-dir={profile}",
        # The page's images are files next to it: readable back from a canvas, to see they are not blank.
        "--allow-file-access-from-files",
        # No network: no name resolves, and every http(s) request goes to a proxy that refuses it.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost", "--proxy-server=127.0.0.1:9",
        "--virtual-time-budget=15000", "--dump-dom", probed.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="render-check">(.*?)</pre>', done.stdout, re.DOTALL)
    if not found:
        raise AssertionError(f"no render check in Chromium's DOM (exit {done.returncode}):\n"
                             f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(html.unescape(found.group(1)))
