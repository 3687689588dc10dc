"""Screenshots of TensorBoard's pages for a run dir, taken by a headless Chromium; both started and stopped here.

    python tools/tensorboard_view.py outputs/2026-11-28/09-52-19 --out shots       # as a user first meets it
    python tools/tensorboard_view.py outputs --out shots --full-page               # the same state, whole page
    python tools/tensorboard_view.py outputs --out shots --all-groups --width 1600  # every group opened

A tool for the project's own screenshots (outputs/screenshots), not part of the installed package: run it from
a checkout where ``pip install -e .`` has installed cnn_explorer.

Starts ``tensorboard --logdir RUN_OR_LOGDIR --host 127.0.0.1 --port P`` on a free loopback port and waits until it
lists every run dir under RUN_OR_LOGDIR that holds event files. Then Chromium (headless, driven through its
DevTools protocol over a pipe: no debugging port, no Python dependency) opens each page, waits until it has
settled, and saves it in ``--out``:

    timeseries.png   the Time Series tab, TensorBoard's landing page: scalar and image cards by tag group
    scalars.png      the (older) Scalars tab: one chart per scalar tag
    images.png       the Images tab: one card per image tag, with a step slider
    text.png, hparams.png, ...   the Text and HParams tabs, when the runs logged text or hparams

Two views:

- the default view (``--default-view``, the default): what a user first meets, a 1280 x 800 window with
  TensorBoard's own defaults: the groups it opens (the first two of a page) open, the others closed, nothing
  scrolled. ``--full-page`` grows the viewport until nothing scrolls, with the same groups open and closed.
- ``--all-groups``: every tag group opened and the viewport grown until nothing scrolls (up to
  :data:`MAX_HEIGHT` pixels), so the picture holds every card: a state no user sees without a click per group.

Besides the PNGs, each page is read through the same DevTools connection (:class:`PageShot`): its visible text,
its tag groups and whether they are open, the Time Series cards in the viewport with the runs in each chart's
legend and each image's drawn and displayed size, and the checkboxes (the HParams columns shown).

A page has settled when no request is in flight, every image has loaded, and two screenshots taken
:data:`QUIET_S` apart are the same. TensorBoard only draws the cards in view. Charts are drawn as SVG
(TensorBoard's WebGL charts come out blank in a headless browser without a GPU).

Both programs run in process groups of their own and are stopped by PID (SIGTERM, a wait, then SIGKILL) when
the screenshots are done, on an error, on Ctrl-C and on SIGTERM. Only the loopback address is used: TensorBoard
binds 127.0.0.1, and Chromium uses no proxy and resolves no host name. The paths written are printed on stdout.
When Chromium or TensorBoard is missing, or the dir holds no event files, the message says so and the exit
status is 1.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

from cnn_explorer.errors import UserError

LOOPBACK = "127.0.0.1"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Page names are TensorBoard's plugin names, which are also the URL fragments of their tabs. Time Series is
# always listed; the others only when their plugin has data in the runs.
PAGES = ("timeseries", "scalars", "images", "text", "hparams")
DEFAULT_SAMPLES = "images=200"  # TensorBoard otherwise keeps 10 images per tag and samples the other epochs away
# The window a user first meets TensorBoard in (a common laptop screen's browser window).
DEFAULT_WIDTH, DEFAULT_HEIGHT = 1280, 800
QUIET_S = 0.5
POLL_S = 0.25
# A log dir with hundreds of tags still gives one picture, of a size Chromium draws (checked with Chromium 156).
MAX_HEIGHT = 16384
STOP_GRACE_S = 5.0
# TensorBoard's line charts draw with WebGL, which headless Chromium on a machine without a GPU renders blank;
# its forceSVG feature flag draws the same charts as SVG.
PAGE_QUERY = "?forceSVG=true"
SAMPLES_FORMAT = re.compile(r"^\w+=\d+(,\w+=\d+)*$")

# The page's text as a reader sees it, with what the settling and sizing need (images still loading; how far
# the page's scrollable parts overflow). Not document.body.innerText, which misses the shadow DOM of
# TensorBoard's Polymer dashboards (Scalars, Images, ...) and breaks Time Series card titles in two (the group
# part of "train/loss" is a flex item of its own). So: the rendered text nodes in flat-tree order (a shadow
# host's shadow root, a slot's assigned nodes), skipping display:none and visibility:hidden, joined as laid out:
# nothing between pieces that touch on one line (no white space between them either), a space between other
# pieces on one line, else a new line.
PAGE_STATE_JS = r"""
(() => {
  if (!document.documentElement) return {text: '', loadingImages: 0, overflow: 0, readyState: 'loading', href: ''};
  let text = '';
  let last = null;
  let spaceAfterLast = false;
  let loadingImages = 0;
  let overflow = Math.max(0, document.documentElement.scrollHeight - window.innerHeight);
  const addText = (node) => {
    const words = node.data.replace(/\s+/g, ' ').trim();
    if (!words) return;
    const range = document.createRange();
    range.selectNodeContents(node);
    const boxes = [...range.getClientRects()].filter((box) => box.width > 0 && box.height > 0);
    if (!boxes.length) return;  // not laid out, as in <noscript>
    const first = boxes[0];
    if (last) {
      const sameLine = Math.abs((first.top + first.bottom) / 2 - (last.top + last.bottom) / 2) < first.height / 2;
      const touching = first.left - last.right <= 1 && !spaceAfterLast && !/^\s/.test(node.data);
      text += sameLine ? (touching ? '' : ' ') : '\n';
    }
    text += words;
    last = boxes[boxes.length - 1];
    spaceAfterLast = /\s$/.test(node.data);
  };
  const visit = (node, shown) => {
    if (node.nodeType === Node.TEXT_NODE) {
      if (shown) addText(node);
      return;
    }
    if (node.nodeType !== Node.ELEMENT_NODE) {
      for (const child of node.childNodes) visit(child, shown);
      return;
    }
    const style = getComputedStyle(node);
    if (style.display === 'none') return;
    if (node.tagName === 'IMG' && !node.complete) loadingImages += 1;
    if (/auto|scroll/.test(style.overflowY)) overflow = Math.max(overflow, node.scrollHeight - node.clientHeight);
    let children = node.childNodes;
    if (node.shadowRoot) children = node.shadowRoot.childNodes;
    else if (node.tagName === 'SLOT' && node.assignedNodes({flatten: true}).length) {
      children = node.assignedNodes({flatten: true});
    }
    for (const child of children) visit(child, style.visibility === 'visible');
  };
  visit(document.documentElement, true);
  return {text, loadingImages, overflow, readyState: document.readyState, href: location.href};
})()
"""

# For --all-groups. TensorBoard opens only the first two tag groups of a page (train.py logs about fifteen); this
# opens the others: it clicks the toggle of each closed Time Series group, and sets `opened` on each closed group
# (tf-category-paginated-view) of the Polymer dashboards. It knows TensorBoard 2.x's markup and changes nothing
# where that markup is missing. Returns how many groups it opened.
EXPAND_GROUPS_JS = r"""
(() => {
  let opened = 0;
  const visit = (root) => {
    for (const element of root.querySelectorAll('*')) {
      if (element.tagName === 'TF-CATEGORY-PAGINATED-VIEW' && element.opened === false) {
        element.opened = true;
        opened += 1;
      } else if (element.matches('metrics-card-groups button.group-toolbar')
                 && element.querySelector('mat-icon[data-mat-icon-name="expand_more_24px"]')) {
        element.click();
        opened += 1;
      }
      if (element.shadowRoot) visit(element.shadowRoot);
    }
  };
  visit(document);
  return opened;
})()
"""


# What the page shows, read from its DOM (TensorBoard 2.x's markup; a part whose markup is missing comes back
# empty): the tag groups and whether each is open; the Time Series cards in the viewport, with the runs a chart's
# legend (its data table) lists and the colours of the lines it draws; every image in the viewport with its drawn
# (natural) and displayed size; and the checkboxes with their labels (the HParams tab's shown columns). Positions
# are CSS pixels from the top of the viewport, so a caller can tell what the first screen holds.
PAGE_DOM_JS = r"""
(() => {
  const elements = [];
  const collect = (root) => {
    for (const element of root.querySelectorAll('*')) {
      elements.push(element);
      if (element.shadowRoot) collect(element.shadowRoot);
    }
  };
  collect(document);
  const words = (text) => (text || '').replace(/\s+/g, ' ').trim();
  const inView = (box) => box.width > 0 && box.height > 0 && box.bottom > 0 && box.top < window.innerHeight;
  // Up from an element through its parents and the hosts of the shadow roots it sits in.
  const ancestors = function* (node) {
    for (let at = node; at; at = at.parentNode || at.host) yield at;
  };
  const groups = [];
  const cards = [];
  const images = [];
  const checkboxes = [];
  for (const element of elements) {
    if (element.matches('metrics-card-groups button.group-toolbar')) {  // Time Series
      const title = element.querySelector('.group-title');
      groups.push({
        name: title ? title.getAttribute('title') || words(title.textContent) : '',
        open: !!element.querySelector('mat-icon[data-mat-icon-name="expand_less_24px"]'),
        top: element.getBoundingClientRect().top,
      });
    } else if (element.tagName === 'TF-CATEGORY-PAGINATED-VIEW' && element.category) {  // Polymer dashboards
      groups.push({
        name: String(element.category.name), open: !!element.opened, top: element.getBoundingClientRect().top,
      });
    } else if (element.tagName === 'CARD-VIEW') {
      const box = element.getBoundingClientRect();
      if (!inView(box)) continue;
      const path = element.querySelector('tb-truncated-path');
      const kind = element.querySelector('scalar-card') ? 'scalar'
        : element.querySelector('image-card') ? 'image'
        : element.querySelector('histogram-card') ? 'histogram' : 'other';
      const runs = [...element.querySelectorAll('.row-circle')].map((circle) => {
        const cell = circle.closest('tb-data-table-content-cell');
        const swatch = circle.querySelector('span');
        return {
          name: cell && cell.nextElementSibling ? words(cell.nextElementSibling.textContent) : '',
          colour: swatch ? getComputedStyle(swatch).backgroundColor : '',
        };
      });
      const lines = new Set();
      for (const line of element.querySelectorAll('line-chart .series-view svg path')) {
        const stroke = getComputedStyle(line).stroke;
        if (stroke && stroke !== 'none') lines.add(stroke);
      }
      cards.push({
        title: path ? path.getAttribute('title') || words(path.textContent) : '', kind,
        top: box.top, bottom: box.bottom, left: box.left, right: box.right, runs, lineColours: [...lines].sort(),
      });
    } else if (element.tagName === 'IMG' && element.complete && element.naturalWidth > 0) {
      const box = element.getBoundingClientRect();
      if (!inView(box)) continue;
      let title = '';
      for (const at of ancestors(element)) {
        if (at.tagName === 'CARD-VIEW' || at.tagName === 'IMAGE-CARD-COMPONENT') {
          const path = at.querySelector('tb-truncated-path');
          if (path) { title = path.getAttribute('title') || words(path.textContent); break; }
        }
        if (typeof at.tag === 'string' && at.tag) { title = at.tag; break; }  // the Images tab's tf-image-loader
      }
      // The picture's displayed size: with object-fit contain (Time Series) it is scaled to fit the element's box.
      const [width, height] = [element.naturalWidth, element.naturalHeight];
      const fit = getComputedStyle(element).objectFit;
      let scale = Math.min(element.clientWidth / width, element.clientHeight / height);
      if (fit === 'scale-down') scale = Math.min(scale, 1);
      const shown = /contain|scale-down/.test(fit) ? [width * scale, height * scale]
        : [element.clientWidth, element.clientHeight];
      images.push({title, natural: [width, height], shown, top: box.top});
    } else if (element.tagName === 'PAPER-CHECKBOX' || (element.tagName === 'INPUT' && element.type === 'checkbox')) {
      if (!element.getBoundingClientRect().width) continue;
      const label = element.tagName === 'PAPER-CHECKBOX' ? element : element.closest('label, mat-checkbox, tr, div');
      checkboxes.push({label: words(label ? label.textContent : ''), checked: !!element.checked});
    }
  }
  return {groups, cards, images, checkboxes};
})()
"""


@dataclass(frozen=True)
class Group:
    """A tag group of a page (a Time Series group, or a category of the Scalars or Images tab).

    Attributes:
        name: the group's name, the part of its tags before the first ``/``.
        open: whether its cards are shown.
        top: its header's distance from the top of the viewport, in CSS pixels.
    """

    name: str
    open: bool
    top: float


@dataclass(frozen=True)
class Card:
    """A Time Series card in the viewport.

    Attributes:
        title: its tag, e.g. ``Curves/accuracy``.
        kind: ``scalar``, ``image``, ``histogram`` or ``other``.
        top, bottom: its edges' distance from the top of the viewport, in CSS pixels.
        runs: for a chart, the runs its legend (the data table under it) lists, in its order.
        run_colours: each of those runs' colour, as CSS ``rgb(...)``.
        line_colours: the distinct colours of the lines the chart draws (smoothed and raw lines share one).
    """

    title: str
    kind: str
    top: float
    bottom: float
    runs: tuple[str, ...]
    run_colours: tuple[str, ...]
    line_colours: tuple[str, ...]


@dataclass(frozen=True)
class ShownImage:
    """An image in the viewport, as drawn (its PNG's pixels) and as displayed (CSS pixels, at scale factor 1).

    Attributes:
        title: the tag of the card it is on (empty if none was found).
        natural: (width, height) of the image as logged.
        shown: (width, height) the page displays its picture at, in CSS pixels (with ``object-fit: contain``, as in
            Time Series, the picture scaled to fit the element, not the element's box).
        top: its distance from the top of the viewport, in CSS pixels.
    """

    title: str
    natural: tuple[int, int]
    shown: tuple[float, float]
    top: float


@dataclass(frozen=True)
class PageShot:
    """One TensorBoard page as Chromium drew it.

    Attributes:
        page: the tab, one of :data:`PAGES`.
        png: the screenshot.
        text: the page's visible text, one line per block, the shadow DOM included (card titles, tag names).
        height: the viewport height the page was taken at, in pixels (it grows to fit with ``full_page``).
        groups: the page's tag groups, open or closed, in page order.
        cards: the Time Series cards in the viewport, in page order.
        images: the images in the viewport, in page order.
        checkboxes: (label, checked) of each checkbox shown, e.g. the HParams tab's columns.
    """

    page: str
    png: Path
    text: str
    height: int
    groups: tuple[Group, ...] = ()
    cards: tuple[Card, ...] = ()
    images: tuple[ShownImage, ...] = ()
    checkboxes: tuple[tuple[str, bool], ...] = ()


@dataclass(frozen=True)
class TensorBoardServer:
    """A TensorBoard serving on the loopback address, started by :func:`tensorboard_server`.

    Attributes:
        url: its address, e.g. ``http://127.0.0.1:40123/``.
        pid: its process ID, which is also its process group ID (its data server is in that group).
        runs: the run names it lists (``.`` for event files directly in the log dir), sorted.
        plugins: the plugins that have data to show, e.g. ``{"timeseries", "scalars", "images"}``.
    """

    url: str
    pid: int
    runs: tuple[str, ...]
    plugins: frozenset[str]


def find_chromium() -> str | None:
    """The first of :data:`CHROMIUM_NAMES` on PATH (Debian's package installs ``chromium``), or ``None``."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def event_runs(logdir: Path) -> list[str]:
    """The runs TensorBoard will list for ``logdir``: every dir under it that holds a non-empty event file.

    TensorBoard lists a run only once it has read an event from it, and a writer that never flushed (a run
    killed early) leaves an empty file.

    Returns:
        run names as TensorBoard spells them, sorted: the path relative to ``logdir`` with ``/``, and ``.``
        for event files directly in ``logdir`` (where train.py writes them).

    Raises:
        UserError: if ``logdir`` is not a dir, or no file under it is a non-empty TensorBoard event file.
    """
    if not logdir.is_dir():
        raise UserError(f"{logdir} does not exist or is not a dir; give a run dir or a dir of runs, e.g. outputs")
    runs = sorted(
        Path(dirpath).relative_to(logdir).as_posix()
        for dirpath, _, files in os.walk(logdir)
        if any(".tfevents." in name and _size(Path(dirpath) / name) > 0 for name in files)
    )
    if not runs:
        raise UserError(
            f"{logdir} holds no TensorBoard event files with data (events.out.tfevents.*, not empty); train.py "
            f"writes them into the run dir unless it ran with logger=none"
        )
    return runs


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # removed, or a dangling link, since the dir was listed
        return 0


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def tensorboard_server(
    logdir: Path, *, samples_per_plugin: str = DEFAULT_SAMPLES, timeout_s: float = 60.0
) -> Iterator[TensorBoardServer]:
    """Serve ``logdir`` with TensorBoard on 127.0.0.1 until the ``with`` block ends, then stop it by PID.

    Waits until TensorBoard lists every run of :func:`event_runs`. TensorBoard runs in this Python
    (``python -m tensorboard.main``), in a process group of its own, so a Ctrl-C in the terminal reaches only
    this process, whose exit stops it.

    Args:
        logdir: a run dir or a dir of run dirs.
        samples_per_plugin: TensorBoard's ``--samples_per_plugin``, e.g. ``images=200``.
        timeout_s: how long TensorBoard may take to start and list the runs.

    Raises:
        UserError: if TensorBoard is not installed, ``logdir`` holds no event files, ``samples_per_plugin``
            is not ``name=count[,name=count]``, or TensorBoard exits or does not list the runs in time.
    """
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError(f"TensorBoard is not installed in this Python ({sys.executable}): pip install tensorboard")
    _check_samples(samples_per_plugin)
    _check_timeout(timeout_s)
    runs = event_runs(logdir)
    port = free_loopback_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", LOOPBACK]
    command += ["--port", str(port), "--samples_per_plugin", samples_per_plugin]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            url = f"http://{LOOPBACK}:{port}/"
            plugins = _wait_for_runs(process, url, runs, timeout_s, log)
            yield TensorBoardServer(url=url, pid=process.pid, runs=tuple(runs), plugins=plugins)
        finally:
            stop_process_group(process)


def _wait_for_runs(
    process: subprocess.Popen[bytes], url: str, runs: list[str], timeout_s: float, log: IO[bytes]
) -> frozenset[str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy, whatever the environment
    deadline = time.monotonic() + timeout_s
    listed: set[str] = set()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"TensorBoard exited with status {process.returncode} before it served:\n{_tail(log)}")
        try:
            with opener.open(url + "data/runs", timeout=POLL_S * 4) as reply:
                listed = set(json.load(reply))
            if listed.issuperset(runs):
                with opener.open(url + "data/plugins_listing", timeout=POLL_S * 4) as reply:
                    listing = json.load(reply)
                return frozenset(name for name, plugin in listing.items() if plugin.get("enabled"))
        except (OSError, ValueError):  # not serving yet (refused, reset, timed out) or a half-written reply
            pass
        time.sleep(POLL_S)
    missing = ", ".join(sorted(set(runs) - listed))
    raise UserError(
        f"TensorBoard did not list the runs {missing} within {timeout_s:g} s (a large log dir takes longer: "
        f"raise --timeout). Its output:\n{_tail(log)}"
    )


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """Stop a child started with ``start_new_session=True``, and what it started, by its PID.

    The child leads a process group whose ID is its PID, so SIGTERM goes to it and to its helpers at once
    (TensorBoard's data server, Chromium's renderer and GPU processes); SIGKILL follows after ``grace_s``.
    The group is signalled only before the child is reaped, while its ID cannot belong to anyone else.
    """
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class Browser:
    """A headless Chromium driven through the DevTools protocol over ``--remote-debugging-pipe``.

    Chromium reads NUL-terminated JSON commands from its fd 3 and writes replies and events to its fd 4;
    see https://chromedevtools.github.io/devtools-protocol/. Start one with :func:`headless_chromium`.

    Attributes:
        pid: Chromium's process ID, which is also its process group ID.
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        commands: IO[bytes],
        replies: int,
        log: IO[bytes],
        *,
        width: int,
        height: int,
        full_page: bool,
        open_groups: bool,
        timeout_s: float,
    ) -> None:
        self.pid = process.pid
        self._process = process
        self._commands = commands
        self._replies = replies
        self._log = log
        self._width = width
        self._height = height
        self._full_page = full_page
        self._open_groups = open_groups
        self._timeout_s = timeout_s
        self._buffer = b""
        self._last_id = 0
        self._requests: dict[str, set[str]] = {}  # per page session, the network requests not yet finished

    def capture(self, url: str, png: Path, page: str = "") -> PageShot:
        """Open ``url`` in a new tab, wait until it settles, save the screenshot as ``png``, close the tab.

        Returns:
            what the page showed (its text, groups, cards, images, checkboxes; see :class:`PageShot`), named
            ``page``, and the viewport height it was taken at.

        Raises:
            UserError: if the page does not load, or does not settle within the browser's timeout.
        """
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self._requests[session] = set()
        try:
            self.call("Network.enable", session=session)
            height = self._height
            self._set_viewport(session, height)
            navigation = self.call("Page.navigate", {"url": url}, session=session)
            if navigation.get("errorText"):
                raise UserError(f"Chromium could not open {url}: {navigation['errorText']}")
            deadline = time.monotonic() + self._timeout_s
            image, state = self._settle(session, url, deadline)
            # TensorBoard's own defaults stand unless every group is asked for.
            if self._open_groups and self._evaluate(session, EXPAND_GROUPS_JS):
                image, state = self._settle(session, url, deadline)
            # Each taller viewport lets TensorBoard draw more cards, which may change what overflows.
            while self._full_page and state["overflow"] > 0 and height < MAX_HEIGHT:
                height = min(MAX_HEIGHT, height + int(state["overflow"]))
                self._set_viewport(session, height)
                image, state = self._settle(session, url, deadline)
            png.write_bytes(image)
            dom = self._evaluate(session, PAGE_DOM_JS)
            # Only on success: after an error or a Ctrl-C the browser is stopped anyway, and waiting for its
            # answer here would hold up that stop.
            self.call("Target.closeTarget", {"targetId": target})
            return _page_shot(page, png, state["text"], height, dom)
        finally:
            del self._requests[session]

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None) -> dict[str, Any]:
        """Send one DevTools command and return its result, handling the events that arrive before it.

        Raises:
            UserError: if Chromium answers with an error, closes the pipe, or does not answer within its timeout.
        """
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        try:
            self._commands.write(json.dumps(message).encode() + b"\0")
            self._commands.flush()
        except BrokenPipeError as err:
            raise UserError(f"Chromium is gone (did it crash?). Its output:\n{_tail(self._log)}") from err
        deadline = time.monotonic() + self._timeout_s
        while True:
            reply = self._receive(deadline)
            if reply.get("id") != self._last_id:
                self._on_event(reply)
            elif "error" in reply:
                raise UserError(f"Chromium refused {method}: {reply['error'].get('message', reply['error'])}")
            else:
                return reply["result"]

    def _settle(self, session: str, url: str, deadline: float) -> tuple[bytes, dict[str, Any]]:
        """Wait until nothing loads and two screenshots :data:`QUIET_S` apart match; return the last and the state."""
        previous = b""
        while True:
            state = self._evaluate(session, PAGE_STATE_JS)
            image = base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"])
            busy = (
                bool(self._requests[session])
                or state["loadingImages"] > 0
                or state["readyState"] != "complete"
                or state["href"] == "about:blank"  # the tab's first page, until the navigation commits
            )
            if not busy and image == previous:
                return image, state
            previous = b"" if busy else image
            if time.monotonic() > deadline:
                raise UserError(
                    f"{url} did not settle within {self._timeout_s:g} s ({len(self._requests[session])} requests "
                    f"and {state['loadingImages']} images still loading); raise --timeout"
                )
            time.sleep(QUIET_S)

    def _evaluate(self, session: str, expression: str) -> Any:
        reply = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
        if "exceptionDetails" in reply:  # a bug in this module's JavaScript, not a problem of the page
            raise RuntimeError(f"{expression[:80]!r}... failed: {reply['exceptionDetails']}")
        return reply["result"]["value"]

    def _set_viewport(self, session: str, height: int) -> None:
        metrics = {"width": self._width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", metrics, session=session)

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UserError(
                    f"Chromium did not answer within {self._timeout_s:g} s. Its output:\n{_tail(self._log)}"
                )
            readable, _, _ = select.select([self._replies], [], [], remaining)
            if readable:
                chunk = os.read(self._replies, 1 << 20)
                if not chunk:
                    raise UserError(
                        f"Chromium closed its DevTools pipe (did it crash?). Its output:\n{_tail(self._log)}"
                    )
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _on_event(self, event: dict[str, Any]) -> None:
        requests = self._requests.get(event.get("sessionId", ""))
        if requests is None:
            return
        request = event.get("params", {}).get("requestId")
        if event.get("method") == "Network.requestWillBeSent":
            requests.add(request)
        elif event.get("method") in ("Network.loadingFinished", "Network.loadingFailed"):
            requests.discard(request)


def _page_shot(page: str, png: Path, text: str, height: int, dom: dict[str, Any]) -> PageShot:
    """A :class:`PageShot` from :data:`PAGE_DOM_JS`'s answer."""
    return PageShot(
        page=page,
        png=png,
        text=text,
        height=height,
        groups=tuple(Group(name=g["name"], open=g["open"], top=g["top"]) for g in dom["groups"]),
        cards=tuple(
            Card(
                title=c["title"],
                kind=c["kind"],
                top=c["top"],
                bottom=c["bottom"],
                runs=tuple(run["name"] for run in c["runs"]),
                run_colours=tuple(run["colour"] for run in c["runs"]),
                line_colours=tuple(c["lineColours"]),
            )
            for c in dom["cards"]
        ),
        images=tuple(
            ShownImage(title=i["title"], natural=tuple(i["natural"]), shown=tuple(i["shown"]), top=i["top"])
            for i in dom["images"]
        ),
        checkboxes=tuple((box["label"], box["checked"]) for box in dom["checkboxes"]),
    )


@contextlib.contextmanager
def headless_chromium(
    *,
    chromium: str | None = None,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    full_page: bool = False,
    open_groups: bool = False,
    timeout_s: float = 60.0,
) -> Iterator[Browser]:
    """A headless Chromium for the ``with`` block, with a throw-away profile; stopped by PID when it ends.

    Args:
        chromium: the browser's executable; default :func:`find_chromium`.
        width: viewport width in pixels.
        height: viewport height in pixels; with ``full_page`` the least height, grown until nothing scrolls.
        full_page: grow the viewport to fit each page (up to :data:`MAX_HEIGHT`).
        open_groups: open every tag group of each page; by default TensorBoard's own choice stands (the first two).
        timeout_s: how long one DevTools command, or one page's loading and settling, may take.

    Raises:
        UserError: if no Chromium is found, or a size or the timeout is out of range.
    """
    executable = chromium or find_chromium()
    if executable is None:
        raise UserError(
            "Chromium is not installed (none of " + ", ".join(CHROMIUM_NAMES) + " is on PATH). On Debian: "
            "sudo apt-get install chromium; elsewhere install Chromium or Chrome, or give its path with --chromium"
        )
    _check_size(width, height)
    _check_timeout(timeout_s)
    flags = [
        "--headless",
        "--remote-debugging-pipe",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-extensions",
        "--disable-sync",
        "--mute-audio",
        "--no-proxy-server",
        # Every host name resolves to nothing: the only address the browser can reach is the literal 127.0.0.1.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        # Containers often give /dev/shm 64 MB, too little for Chromium's shared memory; it then crashes.
        "--disable-dev-shm-usage",
    ]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to start its sandbox as root (CI containers run as root)
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(
            tempfile.TemporaryDirectory(prefix="cnn-explorer-chromium-", ignore_cleanup_errors=True)
        )
        # Chromium's temporary files go here too (a SIGTERM'd Chromium leaves its /tmp/org.chromium.* socket dir).
        environment = {**os.environ, "TMPDIR": scratch}
        log = stack.enter_context(tempfile.TemporaryFile())
        to_browser, commands_end = _high_pipe()
        replies_end, from_browser = _high_pipe()
        commands = stack.enter_context(os.fdopen(commands_end, "wb"))
        stack.callback(os.close, replies_end)
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _ON_FDS_3_AND_4, str(to_browser), str(from_browser), executable, *flags]
                + [f"--user-data-dir={Path(scratch) / 'profile'}", "about:blank"],
                pass_fds=(to_browser, from_browser),
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            os.close(to_browser)
            os.close(from_browser)
        browser = Browser(
            process,
            commands,
            replies_end,
            log,
            width=width,
            height=height,
            full_page=full_page,
            open_groups=open_groups,
            timeout_s=timeout_s,
        )
        try:
            browser.call("Browser.getVersion")  # fails here, with Chromium's output, if it did not start
            yield browser
        finally:
            stop_process_group(process)  # on SIGTERM Chromium shuts down cleanly; its helpers get the signal too


# Puts the pipe's ends on fds 3 and 4, where --remote-debugging-pipe expects them, and becomes Chromium, keeping
# the PID (as does Debian's /usr/bin/chromium, a shell script that execs the browser). A trampoline rather than
# Popen's preexec_fn, which may deadlock in a process with threads; rather than sh, whose dash takes fds 0-9 only.
_ON_FDS_3_AND_4 = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
    "os.close(int(sys.argv[1])); os.close(int(sys.argv[2])); os.execvp(sys.argv[3], sys.argv[3:])"
)


def _high_pipe() -> tuple[int, int]:
    """A pipe whose ends are fds 10 and up, so that moving them to fds 3 and 4 cannot overwrite one of them."""
    low = os.pipe()
    try:
        return fcntl.fcntl(low[0], fcntl.F_DUPFD_CLOEXEC, 10), fcntl.fcntl(low[1], fcntl.F_DUPFD_CLOEXEC, 10)
    finally:
        os.close(low[0])
        os.close(low[1])


def capture_pages(
    logdir: Path,
    out: Path,
    *,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    full_page: bool = False,
    open_groups: bool = False,
    samples_per_plugin: str = DEFAULT_SAMPLES,
    timeout_s: float = 60.0,
    chromium: str | None = None,
    pages: Sequence[str] = PAGES,
) -> list[PageShot]:
    """Screenshots of TensorBoard's Time Series page and of every other tab of :data:`PAGES` that has data.

    By default in the state a user first meets: a 1280 x 800 window, TensorBoard's own open and closed groups.

    Starts TensorBoard (:func:`tensorboard_server`) and Chromium (:func:`headless_chromium`), and stops both
    before returning or raising. Writes ``<page>.png`` into ``out`` (made if missing; files of the same name
    are replaced).

    Args:
        logdir: a run dir or a dir of run dirs.
        out: where the PNGs go.
        width, height, full_page, open_groups, timeout_s, chromium: as for :func:`headless_chromium`.
        samples_per_plugin: as for :func:`tensorboard_server`.
        pages: the pages to take, of :data:`PAGES` (a page whose plugin has no data is left out).

    Returns:
        one :class:`PageShot` per page taken, in the order of :data:`PAGES`.

    Raises:
        UserError: when Chromium or TensorBoard is missing, ``logdir`` holds no event files, an argument is out
            of range, or a page does not load or settle in time.
    """
    # Everything a user can get wrong is reported before either program starts.
    _check_size(width, height)
    _check_samples(samples_per_plugin)
    _check_timeout(timeout_s)
    if unknown := set(pages) - set(PAGES):
        raise UserError(f"unknown pages {sorted(unknown)}; the pages are {', '.join(PAGES)}")
    event_runs(logdir)
    with contextlib.ExitStack() as stack:
        # Chromium first: a missing browser is reported before TensorBoard spends seconds starting.
        browser = stack.enter_context(
            headless_chromium(
                chromium=chromium,
                width=width,
                height=height,
                full_page=full_page,
                open_groups=open_groups,
                timeout_s=timeout_s,
            )
        )
        server = stack.enter_context(
            tensorboard_server(logdir, samples_per_plugin=samples_per_plugin, timeout_s=timeout_s)
        )
        out.mkdir(parents=True, exist_ok=True)
        shots = []
        for page in PAGES:
            if page not in pages or (page != "timeseries" and page not in server.plugins):
                continue
            png = out / f"{page}.png"
            shots.append(browser.capture(f"{server.url}{PAGE_QUERY}#{page}", png, page))
        return shots


def _check_size(width: int, height: int) -> None:
    if not (0 < width <= MAX_HEIGHT and 0 < height <= MAX_HEIGHT):
        raise UserError(f"--width and --height must be 1..{MAX_HEIGHT} pixels, got {width} x {height}")


def _check_samples(samples_per_plugin: str) -> None:
    if not SAMPLES_FORMAT.match(samples_per_plugin):
        raise UserError(
            f"--samples-per-plugin must look like images=200 or images=200,scalars=1000, not {samples_per_plugin!r}"
        )


def _check_timeout(timeout_s: float) -> None:
    if not timeout_s > 0:  # also refuses NaN
        raise UserError(f"--timeout must be a positive number of seconds, got {timeout_s}")


def _tail(log: IO[bytes], chars: int = 2000) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-chars:].strip()


def _exit_on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C, so the finally blocks stop TensorBoard and Chromium


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python tools/tensorboard_view.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("logdir", type=Path, metavar="RUN_OR_LOGDIR", help="a run dir, or a dir of runs (outputs)")
    parser.add_argument("--out", type=Path, required=True, help="where the PNGs go")
    view = parser.add_mutually_exclusive_group()
    view.add_argument(
        "--default-view",
        dest="all_groups",
        action="store_false",
        help=f"as a user first meets TensorBoard (the default): {DEFAULT_WIDTH} x {DEFAULT_HEIGHT}, TensorBoard's "
        "own open and closed groups, nothing scrolled",
    )
    view.add_argument(
        "--all-groups",
        dest="all_groups",
        action="store_true",
        help="open every tag group and grow the viewport until nothing scrolls (unless --no-full-page)",
    )
    parser.set_defaults(all_groups=False)  # two actions share the dest; without this the first one's default wins
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH, help=f"viewport width (default {DEFAULT_WIDTH})")
    parser.add_argument(
        "--height", type=int, default=DEFAULT_HEIGHT, help=f"(least) viewport height (default {DEFAULT_HEIGHT})"
    )
    parser.add_argument(
        "--full-page",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="grow the viewport until nothing scrolls; the open groups stay as the view has them "
        "(default: off in the default view, on with --all-groups)",
    )
    parser.add_argument(
        "--samples-per-plugin",
        default=DEFAULT_SAMPLES,
        help=f"TensorBoard's --samples_per_plugin (default {DEFAULT_SAMPLES}: every epoch's images)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for loading the runs, and per page")
    parser.add_argument(
        "--chromium", help="the browser's executable (default: the first of " + ", ".join(CHROMIUM_NAMES) + " on PATH)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        shots = capture_pages(
            args.logdir,
            args.out,
            width=args.width,
            height=args.height,
            full_page=args.all_groups if args.full_page is None else args.full_page,
            open_groups=args.all_groups,
            samples_per_plugin=args.samples_per_plugin,
            timeout_s=args.timeout,
            chromium=args.chromium,
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted (TensorBoard and Chromium are stopped)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    for shot in shots:
        print(f"{shot.page}: {shot.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
