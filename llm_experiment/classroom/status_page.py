"""The instructor's status page (``GET /classroom``): one self-contained HTML page for the projector.

It asks ``/classroom/status`` for the gateway's state every 2 seconds and shows who is running and waiting,
and how each Ollama server is doing. The browser sends the instructor's key as the password it asked for
(HTTP Basic authentication; any user name), so the page holds no secret of its own.
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Classroom gateway</title>
<style>
  body { font: 22px/1.4 system-ui, sans-serif; margin: 1.5em 2em; color: #111; background: #fff; }
  #totals { font-size: 40px; margin: 0.3em 0 1em; }
  table { border-collapse: collapse; margin-bottom: 1.5em; }
  th, td { padding: 0.2em 0.9em; border-bottom: 1px solid #ccc; text-align: left; }
  .bad { color: #b00020; } .ok { color: #0a7a0a; } .muted { color: #777; font-size: 16px; }
</style>
<h1>Classroom gateway</h1>
<p id="totals">loading...</p>
<h2>Students</h2>
<table id="students"></table>
<h2>Ollama servers</h2>
<table id="upstreams"></table>
<p class="muted" id="updated"></p>
<script>
"use strict";
// Every value goes in with textContent, never as HTML: an upstream's error message is not ours.
function fill(table, header, rows) {
  table.replaceChildren();
  const head = table.insertRow();
  for (const text of header) { const th = document.createElement("th"); th.textContent = text; head.append(th); }
  for (const cells of rows) {
    const row = table.insertRow();
    for (const [text, cls] of cells) {
      const td = row.insertCell();
      td.textContent = text;
      if (cls) td.className = cls;
    }
  }
}
async function refresh() {
  const updated = document.getElementById("updated");
  try {
    const answer = await fetch("/classroom/status", {cache: "no-store"});
    if (!answer.ok) throw new Error("status " + answer.status);
    const s = await answer.json();
    const q = s.queue;
    document.getElementById("totals").textContent =
      `${q.running} running of ${q.capacity} \u00b7 ${q.waiting} waiting`;
    fill(document.getElementById("students"), ["student", "running", "waiting", "longest wait"],
      Object.entries(q.students).map(([name, st]) =>
        [[name], [String(st.running)], [String(st.waiting)], [st.longest_wait_s.toFixed(1) + " s"]]));
    fill(document.getElementById("upstreams"), ["server", "state", "active", "models"],
      s.upstreams.map(u => [[u.url], u.healthy ? ["up", "ok"] : ["down: " + (u.last_error || "?"), "bad"],
                            [`${u.active} / ${u.parallel}`], [(u.models || []).join(", ")]]));
    updated.textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    updated.textContent = "cannot read the status (" + error.message + "): is the gateway running?";
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</html>
"""
