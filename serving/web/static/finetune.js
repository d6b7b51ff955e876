// A fine-tune job's page: follow its events live (the API's SSE stream) and move the progress bar.
"use strict";

(function () {
  var list = document.getElementById("job-events");
  if (!list || !window.EventSource) { return; }
  var bar = document.getElementById("job-bar");
  var line = document.getElementById("job-line");
  var status = document.getElementById("job-status");
  var ended = ["succeeded", "rejected", "failed", "cancelled"];
  var source = new EventSource(list.dataset.source);
  var seen = list.children.length;
  list.scrollTop = list.scrollHeight;
  var replayed = 0;

  function handle(kind, event) {
    replayed += 1;
    if (replayed <= seen) { return; }  // the stream replays the history the page already shows
    var data = {};
    try { data = JSON.parse(event.data); } catch (ignored) { /* keep {} */ }
    var item = document.createElement("li");
    item.textContent = kind + " " + event.data;
    list.appendChild(item);
    list.scrollTop = list.scrollHeight;  // the box shows the newest events
    if (kind === "progress" && data.total_steps) {
      bar.max = data.total_steps;
      bar.value = data.step || 0;
      line.textContent = data.step + "/" + data.total_steps + (data.loss !== undefined ? " · loss " + data.loss : "");
    } else {
      status.textContent = kind;
    }
    if (ended.indexOf(kind) >= 0) {
      if (kind === "succeeded" || kind === "rejected") { bar.value = bar.max; }
      source.close();
      window.setTimeout(function () { window.location.reload(); }, 800);  // the gate report
    }
  }

  ["queued", "running", "progress", "evaluating", "resumed"].concat(ended).forEach(function (kind) {
    source.addEventListener(kind, function (event) { handle(kind, event); });
  });
  source.onerror = function () {
    if (ended.indexOf(status.textContent) >= 0) { source.close(); }
  };
})();
