"""The live view page (HTML and its script); :mod:`livereduce.view.server` serves it.

Element ids the page fills (tests and people rely on them): ``state``, ``run``, ``events``,
``rate``, ``errors``, ``last-chunk``, ``publish``, ``caption``, ``figures`` (one ``figure-N``
div per figure), ``log``. ``body[data-figures]`` is the number of figures drawn.
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>livereduce live view</title>
<script src="plotly.min.js"></script>
<style>
 body { font-family: sans-serif; margin: 1em; color: #222; }
 table.status td { padding: 0.1em 1em 0.1em 0; }
 table.status td:first-child { color: #666; }
 #figures .figure { width: 100%; max-width: 1000px; height: 420px; }
 #log { background: #f4f4f4; padding: 0.5em; font-size: 12px; max-height: 20em;
        overflow: auto; white-space: pre-wrap; }
 .problem { color: #b00; }
</style>
</head>
<body data-figures="0">
<h1>livereduce <span id="instrument"></span></h1>
<table class="status">
 <tr><td>state</td><td id="state">loading</td></tr>
 <tr><td>run</td><td id="run"></td></tr>
 <tr><td>events</td><td id="events">0</td></tr>
 <tr><td>rate</td><td id="rate"></td></tr>
 <tr><td>errors</td><td id="errors"></td></tr>
 <tr><td>last chunk</td><td id="last-chunk"></td></tr>
 <tr><td>plots published</td><td id="publish"></td></tr>
</table>
<p id="caption"></p>
<div id="figures"></div>
<h2>log</h2>
<pre id="log"></pre>
<script>
"use strict";
const POLL_MS = __POLL_MS__;
let figuresUpdated = null;

function show(id, value, problem) {
  const element = document.getElementById(id);
  element.textContent = value;
  element.classList.toggle("problem", Boolean(problem));
}

function age(unixSeconds) {
  if (unixSeconds === null || unixSeconds === undefined) return "none yet";
  const seconds = Math.max(0, Date.now() / 1000 - unixSeconds);
  return new Date(unixSeconds * 1000).toISOString().replace("T", " ").slice(0, 19)
    + " UTC (" + seconds.toFixed(0) + " s ago)";
}

async function getJson(name) {
  const response = await fetch(name, {cache: "no-store"});
  return response.json();
}

function showStatus(s) {
  show("instrument", s.instrument || "");
  show("state", s.detail || s.state, s.state === "unknown" || s.state === "backoff");
  show("run", s.run_number ? s.run_number + (s.run_title ? " " + s.run_title : "") : "no run");
  show("events", (s.events || 0).toLocaleString("en-US"));
  show("rate", (s.events_per_s || 0).toFixed(0) + " events/s");
  show("errors", (s.errors || 0) + (s.last_error ? " (last: " + s.last_error + ")" : ""),
       s.errors > 0);
  show("last-chunk", age(s.last_chunk_time));
  const failed = s.publish_errors || 0;
  show("publish", (s.plots_published || 0) + ", " + failed + " failed"
       + (s.last_publish_error ? " (last: " + s.last_publish_error + ")" : ""), failed > 0);
}

function drawFigures(document_) {
  const box = document.getElementById("figures");
  const figures = document_.figures || [];
  show("caption", document_.caption || "");
  figures.forEach((item, i) => {
    let div = document.getElementById("figure-" + i);
    if (!div) {
      div = document.createElement("div");
      div.id = "figure-" + i;
      div.className = "figure";
      box.appendChild(div);
    }
    if (window.Plotly) {
      Plotly.react(div, item.figure.data, item.figure.layout, {responsive: true});
    }
  });
  while (box.children.length > figures.length) box.removeChild(box.lastChild);
  document.body.dataset.figures = String(window.Plotly ? figures.length : 0);
}

async function poll() {
  try {
    showStatus(await getJson("status.json"));
  } catch (error) {
    show("state", "cannot read the status: " + error, true);
  }
  try {
    const figures = await getJson("figures.json");
    if (figures.updated !== figuresUpdated) {
      figuresUpdated = figures.updated;
      drawFigures(figures);
    }
  } catch (error) {
    show("caption", "cannot read the figures: " + error, true);
  }
  try {
    const response = await fetch("log.txt", {cache: "no-store"});
    show("log", await response.text());
  } catch (error) {
    show("log", "cannot read the log: " + error, true);
  }
  setTimeout(poll, POLL_MS);
}
poll();
</script>
</body>
</html>
"""
