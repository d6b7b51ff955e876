// The study viewer: scroll through slices, window presets or dragging, zoom. Pictures are PNGs the
// server renders through the asked window, so nothing here decodes DICOM.
"use strict";

(function () {
  var controls = document.getElementById("viewer-controls");
  if (!controls) { return; }
  var image = document.getElementById("slice-image");
  var slice = document.getElementById("slice");
  var label = document.getElementById("slice-label");
  var preset = document.getElementById("preset");
  var zoom = document.getElementById("zoom");
  var base = controls.dataset.base;
  var frames = Number(controls.dataset.frames);
  var windows = JSON.parse(controls.dataset.windows);
  // The page's view ticket: its slices are part of the view the server audited when it sent the page.
  var view = "&view=" + encodeURIComponent(controls.dataset.view || "");
  var custom = null;  // [centre, width] while the window was dragged away from the preset

  function show() {
    var n = Number(slice.value);
    var query = custom ? "c=" + custom[0].toFixed(1) + "&w=" + custom[1].toFixed(1)
                       : "preset=" + encodeURIComponent(preset.value);
    image.src = base + "/" + n + "?" + query + view;
    image.alt = HA.fill(controls.dataset.alt, { n: n });
    label.textContent = HA.fill(controls.dataset.of, { n: n, count: frames });
  }

  function step(by) {
    var next = Math.min(frames, Math.max(1, Number(slice.value) + by));
    if (next !== Number(slice.value)) { slice.value = String(next); show(); }
  }

  function setZoom(value) {
    zoom.value = String(Math.min(4, Math.max(1, value)));
    image.style.transform = "scale(" + zoom.value + ")";
  }

  // A read's links to the slices it cites: on this page they move the viewer instead of reloading it.
  document.querySelectorAll("a[data-slice]").forEach(function (link) {
    if (link.pathname !== window.location.pathname) { return; }  // another study's read
    link.addEventListener("click", function (event) {
      var n = Math.min(frames, Math.max(1, Number(link.dataset.slice)));
      slice.value = String(n);
      show();
      image.focus();
      event.preventDefault();
    });
  });

  slice.addEventListener("input", show);
  preset.addEventListener("change", function () { custom = null; show(); });
  zoom.addEventListener("input", function () { setZoom(Number(zoom.value)); });

  image.addEventListener("keydown", function (event) {
    if (event.key === "ArrowUp" || event.key === "ArrowRight") { step(1); event.preventDefault(); }
    else if (event.key === "ArrowDown" || event.key === "ArrowLeft") { step(-1); event.preventDefault(); }
    else if (event.key === "+" || event.key === "=") { setZoom(Number(zoom.value) + 0.25); event.preventDefault(); }
    else if (event.key === "-") { setZoom(Number(zoom.value) - 0.25); event.preventDefault(); }
  });
  image.addEventListener("wheel", function (event) {
    step(event.deltaY > 0 ? 1 : -1);
    event.preventDefault();
  }, { passive: false });

  // Drag: right/left widens/narrows the window, down/up raises/lowers its centre; sent on release.
  var dragFrom = null;
  image.addEventListener("pointerdown", function (event) {
    var start = custom || windows[preset.value];
    dragFrom = { x: event.clientX, y: event.clientY, centre: start[0], width: start[1] };
    image.setPointerCapture(event.pointerId);
  });
  image.addEventListener("pointerup", function (event) {
    if (!dragFrom) { return; }
    var dx = event.clientX - dragFrom.x, dy = event.clientY - dragFrom.y;
    if (Math.abs(dx) + Math.abs(dy) > 2) {
      var scale = Math.max(1, dragFrom.width / 200);
      custom = [dragFrom.centre + dy * scale, Math.max(1, dragFrom.width + dx * scale)];
      show();
    }
    dragFrom = null;
  });
})();
